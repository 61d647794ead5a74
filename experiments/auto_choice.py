"""How often MAML's `auto` batching picks a path that is slower in steady state, under each timing rule.

    python experiments/auto_choice.py                  # 24 fresh processes (about 12 min on 2 cores, alone)
    python experiments/auto_choice.py --processes 6 --save timings.jsonl
    python experiments/auto_choice.py --load timings.jsonl      # rescore saved timings

Each fresh process (the timings of a first meta-batch depend on a cold allocator and caches, which a
loop inside one process would not reproduce) times the fomaml Omniglot preset's meta-batch (Conv-4
strided, 5-way 1-shot, 15 queries per class, 32 tasks, random images) as `auto` does: one warm-up
round, then `--rounds` interleaved timed rounds of loop, vmap and split. It then runs each path
forced for 8 steps and keeps the median of the last 6: the steady state. Scoring: a rule that keeps
each path's best of its first k timed rounds (auto uses k = 2) chose wrongly when its path is not the
one fastest in steady state. Prints one line per k. (The first 24-process timings, stop 27, measured
the steady state of loop and split only; vmap was 1.6-2x slower in every timed round.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def worker(rounds: int) -> None:
    """One process's raw timings, as a JSON line on stdout."""
    import torch

    from metalearn.backbones import Conv4
    from metalearn.hardware import keep_freed_memory
    from metalearn.methods.maml import MAML
    from metalearn.methods.task_batching import PATHS
    from metalearn.tasks.episodes import EpisodeBatch

    keep_freed_memory()  # as every metalearn run does
    torch.manual_seed(0)
    backbone = Conv4(1, 64, "stride", channels_last=True, bn_running_stats=False).to(memory_format=torch.channels_last)
    m = MAML(backbone, 64, 5, 0.4, 1, 3, first_order=True, task_batching="loop")
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    q = 15
    b = EpisodeBatch(torch.randn(32, 5, 1, 28, 28), torch.arange(5).expand(32, -1),
                     torch.randn(32, 5 * q, 1, 28, 28), torch.arange(5).repeat_interleave(q).expand(32, -1), 5)
    timed = []
    for _ in range(rounds + 1):  # the first is the warm-up round
        t = {}
        for path in PATHS:
            start = time.perf_counter()
            m.batching.meta_gradient(m, b, path)
            t[path] = time.perf_counter() - start
            for p in m.parameters():
                p.grad = None
        timed.append(t)
    steady = {}
    for path in PATHS:
        m.batching.mode = path
        ts = []
        for _ in range(8):
            start = time.perf_counter()
            m.train_step(b, opt)
            ts.append(time.perf_counter() - start)
        steady[path] = statistics.median(ts[2:])
    print(json.dumps({"rounds": timed[1:], "warmup": timed[0], "steady": steady}))


def choice(rounds: list[dict[str, float]], k: int) -> str:
    """The path a best-of-k rule keeps: each path's fastest of its first k timed rounds, then the fastest path."""
    best = {path: min(r[path] for r in rounds[:k]) for path in rounds[0]}
    return min(best, key=best.get)


def score(records: list[dict]) -> None:
    faster = [min(r["steady"], key=r["steady"].get) for r in records]
    print(f"{len(records)} processes; fastest in steady state: "
          + ", ".join(f"{p} in {faster.count(p)}" for p in sorted(set(faster))))
    for k in range(1, min(len(r["rounds"]) for r in records) + 1):
        wrong = sum(choice(r["rounds"], k) != f for r, f in zip(records, faster, strict=True))
        cost = [r["steady"][choice(r["rounds"], k)] / r["steady"][f] - 1
                for r, f in zip(records, faster, strict=True) if choice(r["rounds"], k) in r["steady"]]
        mean = f"{100 * statistics.mean(cost):.1f}%" if cost else "n/a (no steady state of the chosen path)"
        print(f"best of {k} timed round{'s' if k > 1 else ''}{' (auto)' if k == 2 else ''}: chose wrongly in "
              f"{wrong} of {len(records)}; mean steady-state cost of the choice {mean}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=4, help="timed rounds per process after the warm-up round")
    ap.add_argument("--save", help="write the raw timings here, one JSON line per process")
    ap.add_argument("--load", help="score saved timings instead of measuring")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.rounds)
        return
    if args.load:
        with open(args.load) as f:
            records = [json.loads(line) for line in f if line.strip()]
    else:
        records = []
        for i in range(args.processes):
            out = subprocess.run([sys.executable, __file__, "--worker", "--rounds", str(args.rounds)],
                                 capture_output=True, text=True, check=True).stdout
            records.append(json.loads(out.strip().splitlines()[-1]))
            print(f"process {i + 1}/{args.processes}: steady loop {records[-1]['steady']['loop']:.3f} s, "
                  f"split {records[-1]['steady']['split']:.3f} s", flush=True)
        if args.save:
            with open(args.save, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
    score(records)


if __name__ == "__main__":
    main()
