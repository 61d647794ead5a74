"""Speed benchmarks: every figure and its ratio to the reference, measured in this one run.

    python scripts/bench.py                       # ours, plus learn2learn where it is installed
    python scripts/bench.py --l2l /tmp/l2l        # learn2learn's folder (../shared/bench/install_learn2learn.sh)
    python scripts/bench.py --l2l /tmp/l2l --iters 15 --repeats 3   # the README's table: medians of 3 alternating runs
    python scripts/bench.py --omniglot ../shared/data/omniglot --json bench.json

Figures (issue 7):
1. sampler: 5-way 1+15 Omniglot episodes/s, ours vs learn2learn's TaskDataset on the same images;
2. MAML (second order, Conv-4 strided 64, 5-way 1-shot, meta-batch 32, 1 inner step): tasks/s vs
   learn2learn, with 15 and with 1 query per class; ours task by task, under vmap, split (its query
   side in a thread per core, and in one thread), and auto's pick (and auto's pick under bf16
   autocast, reported beside the fp32 figures, not instead of them);
   the peer also once more with our allocator setting (hardware.keep_freed_memory), for fairness;
3. ProtoNet training step vs the bare forward+backward of the same images through the backbone;
4. evaluation of 600 5-way 1-shot ProtoNet episodes on Omniglot (seconds);
5. start-up: `metalearn-train --help` (seconds), and `metalearn-train debug=smoke` and `metalearn-eval` of
   that run as multiples of `python -c "import torch"` (issue 36's goals: 2x and 1.5x; `--only startup` runs
   just these, medians of 7);
6. peak RSS of the MAML workload, ours vs learn2learn;
7. backbones (issue 38): images/s of a training forward+backward at 84x84 RGB for conv4, resnet12, wrn28_10
   and resnet18 (batch 16, each in its own process), and the peak RSS of one 5-way 5-shot 15-query ProtoNet
   training step on ResNet-12 (`--only backbones` runs just these);
8. augmentation and precision (issue 38, `--only augment`): the elastic field's smoothing as matrix products
   against the one-channel convolutions it replaced, for 128 and 360 images; and one training step of
   Meta-Baseline's width-96 Conv-4 on 128 28x28 images, bf16 autocast against fp32 (alone: the ratios hold
   only on an idle CPU).
Peer figures are skipped, with a note, when learn2learn is not installed. Timings are medians.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_python(code_or_args: list[str], env_extra: dict | None = None, timeout: float = 900) -> str:
    env = {**os.environ, **(env_extra or {}), "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return r.stdout


# ------------------------------------------------------------------ workers (run in their own process)
def maml_worker(queries: int, batching: str, iters: int, amp: str = "none", task_chunk: str = "none") -> None:
    """Our MAML on the anchor's workload (random inputs, so the algorithm alone is timed); amp=bf16
    runs it under CPU bf16 autocast (`hardware.amp=bf16`), which is not the peer's fp32 arithmetic;
    task_chunk: `method.task_chunk` (tasks vmap and split run at once; none: the default bound).
    By hand: `python scripts/bench.py --worker maml 1 vmap 6 none 32` (1 query, vmap, 32 tasks at once)."""
    import contextlib

    import torch

    from metalearn.backbones import Conv4
    from metalearn.hardware import keep_freed_memory
    from metalearn.methods.maml import MAML
    from metalearn.tasks.episodes import EpisodeBatch

    keep_freed_memory()  # as every metalearn run does (hardware.keep_freed_memory, on by default)
    torch.manual_seed(0)
    backbone = Conv4(1, 64, "stride", channels_last=True, bn_running_stats=False).to(memory_format=torch.channels_last)
    m = MAML(backbone, 64, 5, 0.4, 1, 3, task_batching="split" if batching == "split1" else batching,
             task_chunk=None if task_chunk == "none" else int(task_chunk))
    if batching == "split1":
        m.batching.query_threads = 1  # split with its query side in one thread: what the query threads add
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    b = EpisodeBatch(torch.randn(32, 5, 1, 28, 28), torch.arange(5).expand(32, -1),
                     torch.randn(32, 5 * queries, 1, 28, 28), torch.arange(5).repeat_interleave(queries).expand(32, -1), 5)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()
    times = []
    with cast:
        m.train_step(b, opt)  # warm-up (and auto's timing)
        for _ in range(iters):
            start = time.perf_counter()
            m.train_step(b, opt)
            times.append(time.perf_counter() - start)
    path = m.batching.choose(m, b)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tasks_per_s": 32 / statistics.median(times), "path": path, "peak_rss_mb": rss}))


def l2l_worker(script: str, args: list[str]) -> None:
    """Run a learn2learn anchor script, then report this process's peak RSS. With a first argument
    `keep-freed-memory` the process gets our allocator setting first (a fairness check: how much of
    the ratio is the allocator rather than the MAML code)."""
    import runpy

    if args and args[0] == "keep-freed-memory":
        from metalearn.hardware import keep_freed_memory

        keep_freed_memory()
        args = args[1:]

    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


# ------------------------------------------------------------------ the figures
def bench_sampler(omniglot: Path, l2l: Path | None, folder: Path) -> dict:
    import torch

    from metalearn.config import OmniglotConfig
    from metalearn.data.omniglot import build_omniglot
    from metalearn.tasks.episodes import EpisodeSampler, TaskSpec, gather

    torch.set_num_threads(2)
    cfg = OmniglotConfig(root=str(omniglot), archives=["images_background_small1"], rotations=[], split="character",
                         split_fractions=[1.0, 0.0, 0.0], cache_dir=str(folder / "cache"))
    store = build_omniglot(cfg)
    sampler = EpisodeSampler(store, "train", TaskSpec(5, 1, 15), 0)
    counter = iter(range(10**9))

    def draw() -> None:
        i = next(counter)
        gather(store, sampler.plans(i, 1))

    per_episode = median_time(lambda: [draw() for _ in range(100)], 5) / 100
    out = {"ours_episodes_per_s": 1 / per_episode}
    if l2l is not None:
        extracted = folder / "small1"
        if not extracted.is_dir():
            with zipfile.ZipFile(omniglot / "images_background_small1.zip") as z:
                z.extractall(folder)
            (folder / "images_background_small1").rename(extracted)
        text = run_python([str(SHARED / "bench" / "anchor_l2l_sampler.py"), str(extracted), "200"], {"PYTHONPATH": str(l2l)})
        out["l2l_episodes_per_s"] = float(text.strip().split()[-1])
    return out


def bench_maml(l2l: Path | None, iters: int, repeats: int) -> dict:
    """Every MAML configuration, ours and the peer's, `repeats` times in alternation (so a slow spell
    of the machine hits all of them alike); each figure is the median over the repeats."""
    anchor = str(SHARED / "bench" / "anchor_l2l_maml.py")
    runs: dict[str, list[dict]] = {}
    for _ in range(repeats):
        for q in (15, 1):
            for batching in ("loop", "vmap", "split", "split1", "auto"):
                r = run_python([__file__, "--worker", "maml", str(q), batching, str(iters)])
                runs.setdefault(f"q{q}_{batching}", []).append(json.loads(r.strip().splitlines()[-1]))
            r = run_python([__file__, "--worker", "maml", str(q), "auto", str(iters), "bf16"])
            runs.setdefault(f"q{q}_auto_bf16", []).append(json.loads(r.strip().splitlines()[-1]))
            if l2l is None:
                continue
            lines = run_python([__file__, "--worker", "l2l", anchor, str(q), str(iters)],
                               {"PYTHONPATH": str(l2l)}).strip().splitlines()
            runs.setdefault(f"q{q}_l2l", []).append({"tasks_per_s": float(lines[-2].split()[-1]), **json.loads(lines[-1])})
            lines = run_python([__file__, "--worker", "l2l", anchor, "keep-freed-memory", str(q), str(iters)],
                               {"PYTHONPATH": f"{l2l}{os.pathsep}{REPO}"}).strip().splitlines()
            runs.setdefault(f"q{q}_l2l_kept", []).append({"tasks_per_s": float(lines[-2].split()[-1])})
    out = {}
    for key, rs in runs.items():
        speeds = [r["tasks_per_s"] for r in rs]
        out[key] = {**rs[0], "tasks_per_s": statistics.median(speeds), "all_tasks_per_s": speeds}
        if "peak_rss_mb" in rs[0]:
            out[key]["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rs)
        if "path" in rs[0]:
            out[key]["path"] = "/".join(sorted({r["path"] for r in rs}))  # auto's pick(s)
    return out


def bench_protonet_step() -> dict:
    import torch

    from metalearn.backbones import Conv4
    from metalearn.methods.protonet import ProtoNet
    from metalearn.tasks.episodes import EpisodeBatch

    torch.manual_seed(0)
    backbone = Conv4(1, 64, "max", channels_last=True).to(memory_format=torch.channels_last)
    m = ProtoNet(backbone)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    ways, shots, queries = 60, 1, 5
    b = EpisodeBatch(torch.randn(1, ways * shots, 1, 28, 28), torch.arange(ways).expand(1, -1),
                     torch.randn(1, ways * queries, 1, 28, 28), torch.arange(ways).repeat_interleave(queries).expand(1, -1),
                     ways)
    x = torch.cat([b.support[0], b.query[0]])

    def bare() -> None:
        opt.zero_grad()
        backbone(x).sum().backward()
        opt.step()

    step = median_time(lambda: m.train_step(b, opt), 15)
    base = median_time(bare, 15)
    return {"protonet_step_s": step, "bare_forward_backward_s": base, "ratio": step / base, "images": x.shape[0]}


def backbone_worker(name: str, batch: int, iters: int) -> None:
    """Images/s of forward+backward+Adam step at 84x84 RGB through one backbone, in this process."""
    import torch

    from metalearn.backbones import build_backbone
    from metalearn.config import BackboneConfig

    torch.manual_seed(0)
    net = build_backbone(BackboneConfig(name=name), 3)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x = torch.randn(batch, 3, 84, 84)

    def step() -> None:
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()

    seconds = median_time(step, iters)
    print(json.dumps({"images_per_s": batch / seconds, "params": sum(p.numel() for p in net.parameters())}))


def episode_worker(name: str) -> None:
    """Peak RSS of one 5-way 5-shot 15-query ProtoNet training step at 84x84 RGB (and the RSS before it)."""
    import torch

    from metalearn.backbones import build_backbone
    from metalearn.config import BackboneConfig
    from metalearn.methods.protonet import ProtoNet
    from metalearn.tasks.episodes import EpisodeBatch, episode_labels

    m = ProtoNet(build_backbone(BackboneConfig(name=name), 3))
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    b = EpisodeBatch(torch.randn(1, 25, 3, 84, 84), episode_labels(1, 5, 5), torch.randn(1, 75, 3, 84, 84),
                     episode_labels(1, 5, 15), 5)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    m.train_step(b, opt)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak, "before_mb": before, "step_s": seconds}))


def bench_backbones() -> dict:
    out = {}
    for name in ("conv4", "resnet12", "wrn28_10", "resnet18"):
        out[name] = json.loads(run_python([__file__, "--worker", "backbone", name, "16", "3"]).strip().splitlines()[-1])
    out["episode_resnet12"] = json.loads(run_python([__file__, "--worker", "episode", "resnet12"]).strip().splitlines()[-1])
    return out


def report_backbones(b: dict) -> str:
    conv4 = b["conv4"]["images_per_s"]
    rows = [f"| {n} ({b[n]['params'] / 1e6:.2f}M parameters) | {b[n]['images_per_s']:.1f} images/s | "
            f"{b[n]['images_per_s'] / conv4:.3f}x conv4 |" for n in ("conv4", "resnet12", "wrn28_10", "resnet18")]
    e = b["episode_resnet12"]
    rows.append(f"| one 5-way 5-shot 15-query ResNet-12 ProtoNet step (100 images) | peak RSS {e['peak_rss_mb']:.0f} MB "
                f"({e['before_mb']:.0f} MB before it), {e['step_s']:.1f} s | |")
    return ("| backbone, forward+backward+Adam at 84x84 RGB, batch 16 | speed | vs conv4 |\n| --- | --- | --- |\n"
            + "\n".join(rows))


def conv_elastic_field(n: int, size: int, alpha: float, sigma: float):
    """The former smoothing (two one-channel convolutions), kept here as the speed reference."""
    import math

    import torch
    from torch.nn import functional as F

    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-t**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    noise = torch.rand(n * 2, 1, size, size) * 2 - 1
    smooth = F.conv2d(F.pad(noise, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    smooth = F.conv2d(F.pad(smooth, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return alpha * smooth.view(n, 2, size, size).permute(0, 2, 3, 1) * (2.0 / size)


def bench_augment() -> dict:
    import torch

    from metalearn.backbones import build_backbone
    from metalearn.config import BackboneConfig
    from metalearn.tasks.augment import elastic_field

    out: dict = {"elastic": []}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for n in (128, 360):
            conv = median_time(lambda n=n: conv_elastic_field(n, 28, 16.0, 4.0), 20)
            mat = median_time(lambda n=n: elastic_field(n, 28, 28, 16.0, 4.0, torch.device("cpu")), 20)
            out["elastic"].append({"threads": threads, "images": n, "conv_ms": 1e3 * conv, "matmul_ms": 1e3 * mat})
    torch.set_num_threads(2)
    torch.manual_seed(0)
    net = build_backbone(BackboneConfig(name="conv4", width=96), 1, channels_last=True)
    net = net.to(memory_format=torch.channels_last)
    head = torch.nn.Linear(96, 1088)
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], 1e-3)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 1088, (128,))

    def step(dtype: torch.dtype | None) -> None:
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            logits = head(net(x).flatten(1))
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
        opt.step()

    fp32, bf16 = median_time(lambda: step(None), 15), median_time(lambda: step(torch.bfloat16), 15)
    out["conv4_w96_step"] = {"fp32_images_per_s": 128 / fp32, "bf16_images_per_s": 128 / bf16}
    return out


def report_augment(a: dict) -> str:
    lines = ["| elastic field | threads | convolution (before) | matrix products (now) | speed-up |",
             "| --- | --- | --- | --- | --- |"]
    for r in a["elastic"]:
        lines.append(f"| {r['images']} images | {r['threads']} | {r['conv_ms']:.1f} ms | {r['matmul_ms']:.1f} ms "
                     f"| {r['conv_ms'] / r['matmul_ms']:.1f}x |")
    c = a["conv4_w96_step"]
    lines += ["", "| Conv-4 width 96 training step, 128 images, 2 threads | fp32 | bf16 autocast | ratio |",
              "| --- | --- | --- | --- |",
              f"| images/s | {c['fp32_images_per_s']:.0f} | {c['bf16_images_per_s']:.0f} "
              f"| {c['bf16_images_per_s'] / c['fp32_images_per_s']:.2f}x |"]
    return "\n".join(lines)


def bench_eval(omniglot: Path, folder: Path) -> dict:
    import torch

    from metalearn.backbones import Conv4
    from metalearn.config import OmniglotConfig
    from metalearn.data.omniglot import build_omniglot
    from metalearn.engine.evaluate import evaluate, protocol_for
    from metalearn.methods.protonet import ProtoNet
    from metalearn.tasks.episodes import TaskSpec

    cfg = OmniglotConfig(root=str(omniglot), archives=["images_background_small1", "images_background_small2"],
                         rotations=[], split="character", cache_dir=str(folder / "cache"))
    store = build_omniglot(cfg)
    m = ProtoNet(Conv4(1, 64, "max", channels_last=True).to(memory_format=torch.channels_last))
    seconds = median_time(lambda: evaluate(m, store, protocol_for("test", TaskSpec(5, 1, 15), 600, 2), torch.device("cpu")), 3)
    return {"eval_600_episodes_s": seconds}


def bench_startup(repeats: int = 3) -> dict:
    cmd = [console_tool("metalearn-train"), "--help"]

    def once() -> None:
        subprocess.run(cmd, capture_output=True, check=True)

    out = {"help_s": median_time(once, 5)}
    out.update(bench_smoke(repeats))
    return out


def report_startup(st: dict) -> str:
    return "\n".join([
        "| figure | ours | python -c 'import torch' | ratio | goal |", "| --- | --- | --- | --- | --- |",
        f"| metalearn-train --help | {st['help_s']:.2f} s | | | <= 1.5 s |",
        f"| metalearn-train debug=smoke | {st['smoke_s']:.2f} s | {st['import_torch_s']:.2f} s | "
        f"{st['smoke_ratio']:.2f}x | <= 2x |",
        f"| metalearn-eval of that run (20 episodes) | {st['eval_s']:.2f} s | {st['import_torch_s']:.2f} s | "
        f"{st['eval_ratio']:.2f}x | <= 1.5x |"])


def console_tool(name: str) -> str:
    """A console script of this interpreter's environment, as `python` itself is run: beside sys.executable
    (a pyenv or conda shim on PATH would add its own start-up to ours only)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name) or name


def wait_for_detached_plots(folder: Path, timeout: float = 120) -> None:
    """A run's learning curve is drawn after metalearn-train exits (plots=auto): wait for it, untimed, so it
    does not share the cores with the next timing."""
    end = time.monotonic() + timeout
    while not (folder / "learning_curve.png").is_file() and time.monotonic() < end:
        time.sleep(0.05)


def bench_smoke(repeats: int = 3) -> dict:
    """Issue 36's start-up goals: `metalearn-train debug=smoke` and `metalearn-eval` of that run, each as a
    multiple of the wall time of `python -c "import torch"` (median of `repeats`, alternating)."""
    import compileall

    import metalearn

    # metalearn's bytecode cached, as pip leaves an installed package (torch's is); with PYTHONDONTWRITEBYTECODE
    # set (as on this machine) an editable checkout would otherwise compile every module in every process
    compileall.compile_dir(Path(metalearn.__file__).parent, quiet=1)
    tools = {t: console_tool(t) for t in ("metalearn-train", "metalearn-eval")}
    walls: dict[str, list[float]] = {"torch": [], "smoke": [], "eval": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for key, cmd in (("torch", [sys.executable, "-c", "import torch"]),
                             ("smoke", [tools["metalearn-train"], "debug=smoke", f"run_dir=run{i}"]),
                             ("eval", [tools["metalearn-eval"], f"run=run{i}", "episodes=20"])):
                start = time.perf_counter()
                subprocess.run(cmd, capture_output=True, check=True, cwd=tmp)
                walls[key].append(time.perf_counter() - start)
                if key == "smoke":
                    wait_for_detached_plots(Path(tmp) / f"run{i}")
    med = {k: statistics.median(v) for k, v in walls.items()}
    return {"import_torch_s": med["torch"], "smoke_s": med["smoke"], "eval_s": med["eval"],
            "smoke_ratio": med["smoke"] / med["torch"], "eval_ratio": med["eval"] / med["torch"]}


def report(results: dict) -> str:
    rows = []

    def row(name: str, ours: float, peer: float | None, unit: str, goal: str, higher_better: bool = True) -> None:
        ratio = "" if peer is None else f"{(ours / peer if higher_better else peer / ours):.2f}x"
        peer_s = "skipped (learn2learn not installed)" if peer is None else f"{peer:.1f} {unit}"
        rows.append(f"| {name} | {ours:.1f} {unit} | {peer_s} | {ratio} | {goal} |")

    s = results["sampler"]
    row("sampler, 5-way 1+15 Omniglot episodes", s["ours_episodes_per_s"], s.get("l2l_episodes_per_s"), "ep/s", ">= 100x")
    mm = results["maml"]
    for q in (15, 1):
        best = mm[f"q{q}_auto"]
        peer = mm.get(f"q{q}_l2l", {}).get("tasks_per_s")
        row(f"MAML {q} queries/class, auto ({best['path']})", best["tasks_per_s"], peer, "tasks/s", ">= 2x")
        for path, label in (("loop", "loop"), ("vmap", "vmap"), ("split", "split"),
                            ("split1", "split, query side in one thread")):
            row(f"  MAML {q} queries/class, {label}", mm[f"q{q}_{path}"]["tasks_per_s"], peer, "tasks/s", "")
        kept = mm.get(f"q{q}_l2l_kept", {}).get("tasks_per_s")
        if kept is not None:
            row(f"  MAML {q} queries/class, auto, vs the peer with our allocator setting (keep_freed_memory)",
                best["tasks_per_s"], kept, "tasks/s", "")
        bf16 = mm[f"q{q}_auto_bf16"]
        row(f"  MAML {q} queries/class, auto ({bf16['path']}), bf16 autocast (not fp32 like the peer)",
            bf16["tasks_per_s"], peer, "tasks/s", "")
        peer_rss = mm.get(f"q{q}_l2l", {}).get("peak_rss_mb")
        row(f"MAML {q} queries/class, peak RSS", best["peak_rss_mb"], peer_rss, "MB", "report", higher_better=False)
    p = results["protonet"]
    rows.append(f"| ProtoNet step / bare forward+backward ({p['images']} images) | {p['protonet_step_s'] * 1000:.0f} ms | "
                f"{p['bare_forward_backward_s'] * 1000:.0f} ms | {p['ratio']:.2f} | <= 1.10 |")
    rows.append(f"| evaluation, 600 ProtoNet 5-way 1-shot Omniglot episodes | {results['eval']['eval_600_episodes_s']:.2f} s | "
                f"| | <= 5 s |")
    st = results["startup"]
    rows.append(f"| start-up, metalearn-train --help | {st['help_s']:.2f} s | | | <= 1.5 s |")
    rows.append(f"| metalearn-train debug=smoke, wall / python -c 'import torch' | {st['smoke_s']:.2f} s | "
                f"{st['import_torch_s']:.2f} s | {st['smoke_ratio']:.2f}x | <= 2x |")
    rows.append(f"| metalearn-eval of the smoke run (20 episodes), wall / import torch | {st['eval_s']:.2f} s | "
                f"{st['import_torch_s']:.2f} s | {st['eval_ratio']:.2f}x | <= 1.5x |")
    head = "| figure | ours | reference | ratio | goal |\n| --- | --- | --- | --- | --- |"
    return head + "\n" + "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--omniglot", type=Path, default=SHARED / "data" / "omniglot")
    ap.add_argument("--l2l", type=Path, default=None, help="folder learn2learn was installed into")
    ap.add_argument("--iters", type=int, default=6, help="timed MAML meta-batches per configuration")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of every MAML configuration, alternating ours and the peer's; medians are reported")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    ap.add_argument("--only", choices=["backbones", "startup", "augment"], default=None, help="run one section alone")
    ap.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "maml":
            maml_worker(int(rest[0]), rest[1], int(rest[2]), *rest[3:])
        elif kind == "backbone":
            backbone_worker(rest[0], int(rest[1]), int(rest[2]))
        elif kind == "episode":
            episode_worker(rest[0])
        else:
            l2l_worker(rest[0], rest[1:])
        return
    if args.only == "backbones":
        import platform

        print(f"metalearn backbones, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"{time.strftime('%Y-%m-%d')}")
        print(report_backbones(bench_backbones()))
        return
    if args.only == "augment":
        print(f"metalearn augmentation and precision, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, medians")
        print(report_augment(bench_augment()))
        return
    if args.only == "startup":
        st = bench_startup(repeats=7)
        print(f"metalearn start-up, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, medians of 7 alternating runs")
        print(report_startup(st))
        return
    l2l = args.l2l
    if l2l is not None and not (l2l / "learn2learn").is_dir():
        print(f"note: no learn2learn in {l2l}; peer figures skipped", file=sys.stderr)
        l2l = None
    if l2l is None:
        print("note: learn2learn not given (--l2l, see ../shared/bench/install_learn2learn.sh); peer figures skipped",
              file=sys.stderr)
    import platform

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                              f"torch {torch.__version__}", "date": time.strftime("%Y-%m-%d"),
                   "sampler": bench_sampler(args.omniglot, l2l, folder), "maml": bench_maml(l2l, args.iters, args.repeats),
                   "protonet": bench_protonet_step(), "eval": bench_eval(args.omniglot, folder),
                   "startup": bench_startup(), "backbones": bench_backbones()}
    print(f"metalearn benchmarks, {results['machine']}, {results['date']}, MAML: {args.iters} timed meta-batches, "
          f"median of {args.repeats} alternating run(s) per configuration")
    print(report(results))
    print()
    print(report_backbones(results["backbones"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
