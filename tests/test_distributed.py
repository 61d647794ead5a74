"""Data-parallel training: two CPU processes (gloo) take the step one process takes on the whole meta-batch."""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest
import torch
import torch.multiprocessing as mp

from metalearn.backbones import Conv4
from metalearn.engine.distributed import AveragingOptimizer, Ranks, shard
from metalearn.methods.maml import MAML
from metalearn.tasks.episodes import EpisodeBatch


def model() -> MAML:
    torch.manual_seed(0)
    return MAML(Conv4(1, 4, "stride", bn_running_stats=False), 4, 3, 0.3, 1, 1, task_batching="loop").double()


def batch() -> EpisodeBatch:
    g = torch.Generator().manual_seed(3)
    ys, yq = torch.arange(3).repeat(2).expand(4, -1), torch.arange(3).repeat(2).expand(4, -1)
    return EpisodeBatch(torch.randn(4, 6, 1, 12, 12, generator=g, dtype=torch.float64), ys,
                        torch.randn(4, 6, 1, 12, 12, generator=g, dtype=torch.float64), yq, ways=3)


def free_port() -> int:
    """A port nothing listens on now (a fixed one can still be held by an earlier run: gloo then aborts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str, bucket_bytes: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    m = model()
    ranks = Ranks(rank, world)
    opt = AveragingOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), ranks, bucket_bytes=bucket_bytes)
    m.train_step(shard(batch(), ranks), opt)
    if rank == 0:
        torch.save({"state": {k: v.clone() for k, v in m.state_dict().items()}, "calls": opt.calls,
                    "tensors": sum(1 for p in m.parameters() if p.requires_grad)}, out)
    dist.barrier()  # neither rank closes its connections while the other may still be using them
    dist.destroy_process_group()
    # skip C++ teardown at interpreter exit: a gloo thread still joinable there aborted the process
    # ("terminate called without an active exception", about 1 run in 6, before this session too)
    os._exit(0)


@pytest.mark.parametrize(("bucket_bytes", "calls"), [(25 << 20, 1), (0, None), (4000, None)],
                         ids=["one-bucket", "per-tensor", "small-buckets"])
def test_two_ranks_take_the_single_process_step_over_the_whole_meta_batch(tmp_path, bucket_bytes, calls):
    """Gradients averaged in flattened buckets (one all-reduce for the whole model by default), per tensor,
    or in buckets of a few kB: the same update as one process over the whole meta-batch."""
    # SGD, not Adam: a conv bias feeding batch norm has a zero gradient up to round-off, and Adam's first step
    # (g / (|g| + eps)) turns that round-off into a full ±lr step whose sign depends on summation order.
    single = model()
    single.train_step(batch(), torch.optim.SGD(single.parameters(), lr=0.1))
    out = tmp_path / "rank0.pt"
    mp.spawn(_rank, args=(2, free_port(), str(out), bucket_bytes), nprocs=2, join=True)
    two = torch.load(out)
    for k, v in single.state_dict().items():
        assert torch.allclose(v, two["state"][k], rtol=1e-10, atol=1e-12), k
    if bucket_bytes == 0:
        assert two["calls"] == two["tensors"] > 1
    elif calls is not None:
        assert two["calls"] == calls
    else:
        assert 1 < two["calls"] < two["tensors"]


def test_shards_are_equal_disjoint_shares():
    b = batch()
    parts = [shard(b, Ranks(r, 2)) for r in range(2)]
    assert torch.equal(torch.cat([p.support for p in parts]), b.support)
    assert all(p.tasks == 2 and p.ways == 3 for p in parts)


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_two_cpu_processes_through_the_cli(tmp_path):
    import subprocess

    r = subprocess.run(["torchrun", "--nproc_per_node=2", "--master_port=29531", "-m", "metalearn.train",
                        "method=maml", "debug=smoke", "sampler.meta_batch=2", "hardware.threads=1", "test.episodes=10",
                        "run_dir=run"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["test"]["5w1s"]["episodes"] == 10
    host = socket.gethostname()
    assert summary["ranks"] == {"world_size": 2, "backend": "gloo", "devices": [f"{host}:cpu", f"{host}:cpu"]}
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len([x for x in lines if '"train"' in x]) == 20 // 5  # one writer: no duplicated records
    bad = subprocess.run(["torchrun", "--nproc_per_node=2", "--master_port=29532", "-m", "metalearn.train",
                          "method=maml", "debug=smoke", "sampler.meta_batch=3", "run_dir=bad"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "multiple of 2" in bad.stderr
