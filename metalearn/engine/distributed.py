"""Data-parallel meta-training over processes launched by torchrun (one or many nodes).

    torchrun --nproc_per_node=4 -m metalearn.train method=maml sampler.meta_batch=32 hardware=cuda

Every rank draws the same meta-batch (the plans are seeded by the step alone) and keeps its own
equal share of the tasks (pairs, images); gradients are averaged across ranks before each
optimiser step, so the update is the one a single process would make over the whole meta-batch.
Rank 0 alone writes the run folder. Methods are unaware of any of this: they receive their shard
and an optimiser whose step() averages first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from metalearn.errors import MetalearnError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_from_env(device: torch.device) -> Ranks:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())


def local_device(device: torch.device) -> torch.device:
    """On GPUs each rank of a node takes its own device (LOCAL_RANK)."""
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def check_divisible(per_step: int, unit: str, ranks: Ranks) -> None:
    if ranks.active and per_step % ranks.world:
        raise MetalearnError(f"{ranks.world} processes share each training step, but a step has {per_step} {unit}; "
                             f"make it a multiple of {ranks.world} (sampler.meta_batch, method.pairs or "
                             f"method.batch_size)")


def shard(batch, ranks: Ranks):
    """This rank's equal share of a training batch (episodes, pairs or labelled images)."""
    if not ranks.active:
        return batch

    def part(x):
        n = x.shape[0] // ranks.world
        return x[ranks.rank * n: (ranks.rank + 1) * n]

    fields = {k: (part(v) if isinstance(v, (torch.Tensor, np.ndarray)) else v) for k, v in vars(batch).items()}
    return type(batch)(**fields)


BUCKET_BYTES = 25 << 20  # gradients averaged per all-reduce call (DDP's default bucket size)


class AveragingOptimizer:
    """An optimiser whose step() first averages every gradient over the ranks (missing ones count as 0).

    Gradients go in flattened buckets of up to `bucket_bytes`, one all-reduce each, instead of one
    call per parameter tensor (bucket_bytes=0): each collective has a fixed latency, and a Conv-4 has
    18 tensors. Why not DistributedDataParallel: it all-reduces during every backward pass, and the
    methods call backward several times per step (MAML's loop path once per task, the split path per
    query thread), so it would reduce each step many times over or need per-method no_sync plumbing.
    `calls` and `seconds` count the collectives and their time, for scripts/bench_allreduce.py."""

    def __init__(self, optimizer: torch.optim.Optimizer, ranks: Ranks, bucket_bytes: int = BUCKET_BYTES):
        self.optimizer, self.ranks, self.bucket_bytes = optimizer, ranks, bucket_bytes
        self.calls, self.seconds = 0, 0.0

    def buckets(self) -> list[list[torch.Tensor]]:
        """The trainable parameters grouped by device and dtype, each group cut at bucket_bytes."""
        out: list[list[torch.Tensor]] = []
        open_: dict[tuple, list[torch.Tensor]] = {}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if not p.requires_grad:
                    continue
                key = (p.device, p.dtype)
                bucket = open_.setdefault(key, [])
                size = sum(q.numel() * q.element_size() for q in bucket)
                if bucket and (self.bucket_bytes <= 0 or size + p.numel() * p.element_size() > self.bucket_bytes):
                    out.append(bucket)
                    bucket = open_[key] = []
                bucket.append(p)
        return out + [b for b in open_.values() if b]

    def step(self) -> None:
        import time

        import torch.distributed as dist

        start = time.perf_counter()
        for bucket in self.buckets():
            for p in bucket:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            flat = torch.cat([p.grad.reshape(-1) for p in bucket]) if len(bucket) > 1 else bucket[0].grad
            dist.all_reduce(flat)
            self.calls += 1
            flat /= self.ranks.world
            if len(bucket) > 1:
                offset = 0
                for p in bucket:
                    p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                    offset += p.numel()
        self.seconds += time.perf_counter() - start
        self.optimizer.step()

    def __getattr__(self, name: str):
        return getattr(self.optimizer, name)


def describe_ranks(ranks: Ranks, device: torch.device) -> dict:
    """What summary.json records of the process group: world size, backend and every rank's device
    (gathered from the ranks, so a misassigned GPU shows). A collective: every rank calls it."""
    if not ranks.active:
        return {"world_size": 1, "backend": None, "devices": [str(device)]}
    import socket

    import torch.distributed as dist

    mine = f"{socket.gethostname()}:{device}"
    devices: list[str | None] = [None] * ranks.world
    dist.all_gather_object(devices, mine)
    return {"world_size": ranks.world, "backend": dist.get_backend(), "devices": devices}


def all_finite(value: float, ranks: Ranks) -> bool:
    """Whether the value is finite on every rank (so all stop together, none waits forever)."""
    ok = torch.tensor(float(torch.isfinite(torch.tensor(value))))
    if ranks.active:
        import torch.distributed as dist

        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok)


def any_rank(flag: bool, ranks: Ranks) -> bool:
    """Whether `flag` holds on some rank (so a stop decided by one rank's clock is taken by all together)."""
    if not ranks.active:
        return flag
    import torch.distributed as dist

    t = torch.tensor(float(flag))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t)


def broadcast_path(path: str, ranks: Ranks) -> str:
    """Rank 0's value of `path` on every rank."""
    if not ranks.active:
        return path
    import torch.distributed as dist

    box = [path]
    dist.broadcast_object_list(box, src=0)
    return box[0]
