"""GPU benchmarks (issue 7, item 7): which of channels_last, bf16 autocast, vmap over tasks, CUDA graphs
and torch.compile help on a CUDA device, each figure measured in this one run, with the GPU's name and date.

    python scripts/bench_gpu.py --omniglot ../shared/data/omniglot --json bench_gpu.json

Figures:
1. MAML, the workload of ../shared/bench/anchor_l2l_maml.py (second order, Conv-4 strided 64, 5-way 1-shot,
   meta-batch 32, 1 inner step) with 1 and 15 queries per class: tasks/s for tasks one by one and under
   vmap, NCHW and channels_last, fp32 and bf16 autocast, CUDA-graph replay of the whole meta-step, and
   torch.compile; learn2learn's MAML on the same GPU as the reference where it imports;
2. ProtoNet training step (60-way 1+5, Conv-4 max-pool 64) vs the bare forward+backward, each variant;
3. evaluation of 600 5-way 1-shot ProtoNet episodes on Omniglot (seconds);
4. the trainer itself: episodes/s that `metalearn-train` logs for the MAML 5-way preset (sampling, augmentation
   and the step), eager against `hardware.cuda_graph=true`.
Timings are medians over CUDA-synchronised iterations. Results are written to --json after every figure,
so a run stopped early keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from metalearn.backbones import Conv4  # noqa: E402
from metalearn.tasks.episodes import EpisodeBatch  # noqa: E402

DEV = torch.device("cuda")


def cuda_median(fn: Callable[[], object], iters: int, warmup: int = 3) -> float:
    """Median seconds of fn() over iters runs, each timed from a synchronised start to a synchronised end."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cuda_graph(step: Callable[[], object]) -> Callable[[], None]:
    """Capture step() (static inputs, capturable optimiser) once; return its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def amp(bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


# ------------------------------------------------------------------ MAML
def maml_batch(queries: int) -> EpisodeBatch:
    g = torch.Generator().manual_seed(0)
    return EpisodeBatch(torch.randn(32, 5, 1, 28, 28, generator=g).to(DEV), torch.arange(5, device=DEV).expand(32, -1),
                        torch.randn(32, 5 * queries, 1, 28, 28, generator=g).to(DEV),
                        torch.arange(5, device=DEV).repeat_interleave(queries).expand(32, -1), 5)


def ours_maml(queries: int, batching: str, channels_last: bool, bf16: bool, mode: str, iters: int) -> float:
    """tasks/s of our MAML; mode: eager | graph (CUDA graph of the meta-step) | compile (torch.compile)."""
    from metalearn.methods.maml import MAML

    torch.manual_seed(0)
    backbone = Conv4(1, 64, "stride", channels_last=channels_last, bn_running_stats=False)
    m = MAML(backbone, 64, 5, 0.4, 1, 3, task_batching=batching).to(DEV)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    b = maml_batch(queries)
    if mode == "eager":
        opt = torch.optim.Adam(m.parameters(), 1e-3)

        def step() -> None:
            with amp(bf16):
                m.train_step(b, opt)
        return 32 / cuda_median(step, iters)
    opt = torch.optim.Adam(m.parameters(), 1e-3, capturable=True)
    use_vmap = batching == "vmap"
    # the losses straight, without train_step's finiteness check (a host sync, which capture forbids)
    vmap_loss, task_loss = m.batched_task_losses, m.task_loss
    if mode == "compile":
        vmap_loss, task_loss = torch.compile(vmap_loss), torch.compile(task_loss)

    def meta_step() -> None:
        opt.zero_grad(set_to_none=False)
        with amp(bf16):
            if use_vmap:
                vmap_loss(b)[0].mean().backward()
            else:
                for t in range(b.tasks):
                    (task_loss(b, t)[0] / b.tasks).backward()
        opt.step()

    if mode == "graph":
        for p in m.parameters():  # grads must exist before capture (zero_grad keeps them)
            p.grad = torch.zeros_like(p)
        return 32 / cuda_median(cuda_graph(meta_step), iters)
    return 32 / cuda_median(meta_step, iters, warmup=3)


def l2l_maml(queries: int, iters: int) -> float:
    """learn2learn's MAML, the anchor script's loop, on this GPU."""
    import learn2learn as l2l

    torch.manual_seed(0)
    model = l2l.vision.models.OmniglotCNN(output_size=5, hidden_size=64, layers=4).to(DEV)
    maml = l2l.algorithms.MAML(model, lr=0.4, first_order=False)
    opt = torch.optim.Adam(maml.parameters(), 1e-3)
    loss = torch.nn.CrossEntropyLoss()
    b = maml_batch(queries)

    def step() -> None:
        opt.zero_grad()
        for t in range(32):
            learner = maml.clone()
            learner.adapt(loss(learner(b.support[t]), b.support_labels[t]))
            loss(learner(b.query[t]), b.query_labels[t]).backward()
        opt.step()
    return 32 / cuda_median(step, iters)


# ------------------------------------------------------------------ ProtoNet
def protonet_step(channels_last: bool, bf16: bool, mode: str, iters: int) -> dict:
    from metalearn.methods.protonet import ProtoNet

    torch.manual_seed(0)
    backbone = Conv4(1, 64, "max", channels_last=channels_last).to(DEV)
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    m = ProtoNet(backbone)
    ways = 60
    b = EpisodeBatch(torch.randn(1, ways, 1, 28, 28, device=DEV), torch.arange(ways, device=DEV).expand(1, -1),
                     torch.randn(1, ways * 5, 1, 28, 28, device=DEV),
                     torch.arange(ways, device=DEV).repeat_interleave(5).expand(1, -1), ways)
    x = torch.cat([b.support[0], b.query[0]])
    if mode == "compile":
        m.backbone = torch.compile(backbone)
    opt = torch.optim.Adam(m.parameters(), 1e-3, capturable=(mode == "graph"))

    def step() -> None:
        opt.zero_grad(set_to_none=mode != "graph")
        with amp(bf16):
            loss, _ = m.loss(b)
        loss.backward()
        opt.step()

    def bare() -> None:
        opt.zero_grad(set_to_none=mode != "graph")
        with amp(bf16):
            out = m.backbone(x).float().sum()
        out.backward()
        opt.step()

    if mode == "graph":
        for p in m.parameters():
            p.grad = torch.zeros_like(p)
        step_s, bare_s = cuda_median(cuda_graph(step), iters), cuda_median(cuda_graph(bare), iters)
    else:
        step_s, bare_s = cuda_median(step, iters), cuda_median(bare, iters)
    return {"step_ms": step_s * 1000, "bare_ms": bare_s * 1000, "ratio": step_s / bare_s}


# ------------------------------------------------------------------ evaluation
def eval_600(omniglot: Path, bf16: bool) -> float:
    from metalearn.config import OmniglotConfig
    from metalearn.data.omniglot import build_omniglot
    from metalearn.engine.evaluate import evaluate, protocol_for
    from metalearn.methods.protonet import ProtoNet
    from metalearn.tasks.episodes import TaskSpec

    with tempfile.TemporaryDirectory() as tmp:
        cfg = OmniglotConfig(root=str(omniglot), archives=["images_background_small1", "images_background_small2"],
                             rotations=[], split="character", cache_dir=tmp)
        store = build_omniglot(cfg)
        m = ProtoNet(Conv4(1, 64, "max", channels_last=True).to(memory_format=torch.channels_last)).to(DEV)

        def run() -> None:
            evaluate(m, store, protocol_for("test", TaskSpec(5, 1, 15), 600, 2), DEV, autocast=amp(bf16))
        return cuda_median(run, 3, warmup=1)


# ------------------------------------------------------------------ the trainer
def trainer_rate(omniglot: Path, graph: bool, steps: int = 400) -> float:
    """Median episodes/s of the trainer's log windows after the first (which holds the capture, or auto's
    timing trial) on the MAML 5-way 1-shot preset, with hardware.cuda_graph on or off."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "metalearn.train", "experiment=maml_omniglot_small_5w1s", f"dataset.root={omniglot}",
               "hardware=cuda", f"hardware.cuda_graph={str(graph).lower()}", f"steps={steps}", "log_every=50",
               "val.every=0", "test.episodes=0", "checkpoint_every=100000", f"run_dir={tmp}/run"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=540, cwd=REPO)
        if r.returncode != 0:
            raise RuntimeError((r.stderr.strip().splitlines() or ["no output"])[-1])
        if graph and "captured as a CUDA graph" not in r.stderr + r.stdout:  # else the figure would be eager's
            raise RuntimeError("hardware.cuda_graph=true ran, but the step was not captured (no capture log line)")
        lines = (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()
        return statistics.median([m["episodes_per_s"] for m in map(json.loads, lines) if m["kind"] == "train"][1:])


def isolated(call: str, timeout: float = 240) -> float | dict:
    """Run `call` (an expression over this module) in a fresh process: a failed CUDA-graph capture or a
    torch.compile crash leaves the CUDA context unusable, so these variants must not share one."""
    code = f"import sys, json; sys.path.insert(0, {str(REPO / 'scripts')!r}); import bench_gpu as B; " \
           f"import torch; torch.backends.cudnn.benchmark = True; print('RESULT', json.dumps(B.{call}))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError((r.stderr.strip().splitlines() or ["no output"])[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--omniglot", type=Path, default=REPO.parent / "shared" / "data" / "omniglot")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", type=Path, default=Path("bench_gpu.json"))
    ap.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile variants (slow to build)")
    ap.add_argument("--sections", default="trainer,maml,protonet,eval",
                    help="which figures, comma-separated (a device call has a time limit): trainer, maml, protonet, eval")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA device (torch.cuda.is_available() is False); scripts/bench.py times the CPU")
    torch.backends.cudnn.benchmark = True
    res: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                 "trainer": {}, "maml": {}, "protonet": {}, "eval": {}}
    sections = set(args.sections.split(","))

    def record(section: str, name: str, fn: Callable[[], object]) -> None:
        start = time.perf_counter()
        try:
            value = fn()
        except Exception as e:  # a variant that cannot run here is reported, not fatal
            value = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            traceback.print_exc(limit=3)
        res[section][name] = value
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"{section:9s} {name:34s} {shown}   ({time.perf_counter() - start:.0f} s)", flush=True)
        args.json.write_text(json.dumps(res, indent=1))

    if "trainer" in sections:
        for graph in (False, True):
            record("trainer", f"maml 5w1s preset {'cuda-graph' if graph else 'eager'}, episodes/s",
                   lambda g=graph: trainer_rate(args.omniglot, g))
    for q in (1, 15) if "maml" in sections else ():
        record("maml", f"q{q} learn2learn", lambda q=q: l2l_maml(q, args.iters))
        for batching in ("loop", "vmap"):
            for cl in (False, True):
                for bf16 in (False, True):
                    name = f"q{q} {batching} {'channels_last' if cl else 'nchw'} {'bf16' if bf16 else 'fp32'}"
                    record("maml", name, lambda q=q, b=batching, cl=cl, h=bf16: ours_maml(q, b, cl, h, "eager", args.iters))
            for bf16 in (False, True):
                record("maml", f"q{q} {batching} cuda-graph {'bf16' if bf16 else 'fp32'}",
                       lambda q=q, b=batching, h=bf16: isolated(f"ours_maml({q}, {b!r}, False, {h}, 'graph', {args.iters})"))
    for cl in (False, True) if "protonet" in sections else ():
        for bf16 in (False, True):
            record("protonet", f"{'channels_last' if cl else 'nchw'} {'bf16' if bf16 else 'fp32'}",
                   lambda cl=cl, h=bf16: protonet_step(cl, h, "eager", 20))
    if "protonet" in sections:
        record("protonet", "nchw fp32 cuda-graph", lambda: isolated("protonet_step(False, False, 'graph', 20)"))
    if "eval" in sections:
        record("eval", "600 episodes fp32", lambda: eval_600(args.omniglot, False))
        record("eval", "600 episodes bf16", lambda: eval_600(args.omniglot, True))
    if not args.skip_compile and {"maml", "protonet"} <= sections:
        record("protonet", "nchw fp32 compile", lambda: isolated("protonet_step(False, False, 'compile', 20)"))
        for q in (1, 15):
            for b in ("vmap", "loop"):
                record("maml", f"q{q} {b} compile fp32",
                       lambda q=q, b=b: isolated(f"ours_maml({q}, {b!r}, False, False, 'compile', {args.iters})"))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
