"""Resident memory of a MAML training process after `auto`'s timing trial, against a path forced.

    python experiments/trial_memory.py auto     # the trial, then steps on the path it chose
    python experiments/trial_memory.py split    # split forced: no trial

Workload: the fomaml Omniglot preset's meta-batch (Conv-4 strided, 5-way 1-shot, 15 queries per
class, 32 tasks), random images. Prints one JSON line: the path, resident MB after the first step and
after 5 more, minor page faults over the last 4 steps, and peak MB.
"""

from __future__ import annotations

import json
import resource
import sys

import torch

from metalearn.backbones import Conv4
from metalearn.hardware import keep_freed_memory
from metalearn.methods.maml import MAML
from metalearn.methods.task_batching import PATHS
from metalearn.tasks.episodes import EpisodeBatch


def resident_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def main(mode: str) -> None:
    keep_freed_memory()  # as every metalearn run does
    torch.manual_seed(0)
    backbone = Conv4(1, 64, "stride", channels_last=True, bn_running_stats=False).to(memory_format=torch.channels_last)
    m = MAML(backbone, 64, 5, 0.4, 1, 3, first_order=True, task_batching=mode)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    q = 15
    b = EpisodeBatch(torch.randn(32, 5, 1, 28, 28), torch.arange(5).expand(32, -1),
                     torch.randn(32, 5 * q, 1, 28, 28), torch.arange(5).repeat_interleave(q).expand(32, -1), 5)
    m.train_step(b, opt)
    after_first = resident_mb()
    m.train_step(b, opt)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        m.train_step(b, opt)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    path = PATHS[int(m.batching_path)] if mode == "auto" else mode
    print(json.dumps({"mode": mode, "path": path, "resident_mb_after_first_step": round(after_first),
                      "resident_mb_after_6_steps": round(resident_mb()), "minor_faults_last_4_steps": faults,
                      "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in PATHS + ("auto",):
        sys.exit(f"usage: python {sys.argv[0]} auto|loop|vmap|split")
    main(sys.argv[1])
