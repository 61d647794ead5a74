"""All-reduce calls and time per training step with 2 gloo ranks: gradients one tensor at a time against
flattened buckets (metalearn/engine/distributed.py's AveragingOptimizer).

    python scripts/bench_allreduce.py              # MAML, Conv-4 64, 5-way 1-shot 15 queries, meta-batch 4 per rank
    python scripts/bench_allreduce.py --steps 30 --width 64

Each setting runs in its own pair of processes (one thread each); prints one line per setting: calls per
step, milliseconds of all-reduce per step (the median over the ranks' steps, rank 0), and the whole step.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, bucket_bytes: int, steps: int, width: int, out: str) -> None:
    import torch.distributed as dist

    from metalearn.backbones import Conv4
    from metalearn.engine.distributed import AveragingOptimizer, Ranks, shard
    from metalearn.methods.maml import MAML
    from metalearn.tasks.episodes import EpisodeBatch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = MAML(Conv4(1, width, "stride", bn_running_stats=False), width, 5, 0.4, 1, 1, task_batching="loop")
    ranks = Ranks(rank, 2)
    opt = AveragingOptimizer(torch.optim.Adam(m.parameters(), 1e-3), ranks, bucket_bytes=bucket_bytes)
    tasks, q = 8, 15
    b = EpisodeBatch(torch.randn(tasks, 5, 1, 28, 28), torch.arange(5).expand(tasks, -1),
                     torch.randn(tasks, 5 * q, 1, 28, 28), torch.arange(5).repeat_interleave(q).expand(tasks, -1), 5)
    reduce_ms, step_ms, calls = [], [], []
    for i in range(steps + 2):
        c0, s0, t0 = opt.calls, opt.seconds, time.perf_counter()
        m.train_step(shard(b, ranks), opt)
        if i >= 2:  # after two warm-up steps
            reduce_ms.append(1000 * (opt.seconds - s0))
            step_ms.append(1000 * (time.perf_counter() - t0))
            calls.append(opt.calls - c0)
    if rank == 0:
        tensors = sum(1 for p in m.parameters() if p.requires_grad)
        Path(out).write_text(json.dumps({"bucket_bytes": bucket_bytes, "tensors": tensors,
                                         "calls_per_step": statistics.median(calls),
                                         "allreduce_ms": statistics.median(reduce_ms),
                                         "step_ms": statistics.median(step_ms)}))
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--width", type=int, default=64)
    args = ap.parse_args()
    from metalearn.engine.distributed import BUCKET_BYTES

    print(f"2 gloo ranks, 1 thread each, MAML Conv-4 {args.width}, {args.steps} steps, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, bucket in (("per tensor (before)", 0), (f"buckets of {BUCKET_BYTES >> 20} MB (after)", BUCKET_BYTES)):
            out = Path(tmp) / f"{bucket}.json"
            mp.spawn(_rank, args=(_free_port(), bucket, args.steps, args.width, str(out)), nprocs=2, join=True)
            r = json.loads(out.read_text())
            print(f"{label}: {r['calls_per_step']:.0f} all-reduce calls per step ({r['tensors']} gradient tensors), "
                  f"{r['allreduce_ms']:.2f} ms of all-reduce per step, step {r['step_ms']:.1f} ms")


if __name__ == "__main__":
    main()
