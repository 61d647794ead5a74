"""What pruning saves a search: the same search space run twice, without a pruner and with one, in one run.

    python scripts/bench_search.py                       # search=metric on the synthetic default, 10 trials
    python scripts/bench_search.py --trials 20 --steps 600 --pruner hyperband

Prints, for each search: the trials completed and pruned, the training steps run in total, the best validation
accuracy found, and the wall time; then pruned / unpruned for the steps and the time. Both searches use the
same sampler seed, so their first trials (before any pruning) are the same proposals.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def search(workdir: Path, name: str, args: argparse.Namespace, pruner: str) -> dict:
    exe = shutil.which("metalearn-train") or "metalearn-train"
    cmd = [exe, "-m", "search=metric", f"steps={args.steps}", f"val.every={args.val_every}",
           f"val.episodes={args.val_episodes}", "test.episodes=0", "hardware.threads=1", "plots=foreground",
           f"schedule.step_size={args.steps}", f"hydra.sweeper.n_trials={args.trials}",
           f"hydra.sweeper.pruner.name={pruner}", f"hydra.sweep.dir={name}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stderr[-2000:]}")
    jobs = [json.loads(p.read_text()) for p in sorted((workdir / name).glob("*/summary.json"))]
    return {"search": name, "completed": sum(j["status"] == "completed" for j in jobs),
            "pruned": sum(j["status"] == "pruned" for j in jobs), "steps": sum(j.get("steps_done", 0) for j in jobs),
            "best_val": max((j.get("best_val") or {}).get("accuracy", 0.0) for j in jobs), "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--val-every", type=int, default=50)
    ap.add_argument("--val-episodes", type=int, default=100)
    ap.add_argument("--pruner", default="median", choices=("median", "hyperband"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        rows = [search(Path(tmp), "unpruned", args, "none"), search(Path(tmp), "pruned", args, args.pruner)]
    for r in rows:
        print(f"{r['search']:>9}: {r['completed']} completed, {r['pruned']} pruned, {r['steps']} steps trained, "
              f"best validation {100 * r['best_val']:.2f}%, {r['wall_s'] / 60:.1f} min")
    a, b = rows
    print(f"pruned / unpruned: steps {b['steps'] / a['steps']:.2f}, wall time {b['wall_s'] / a['wall_s']:.2f}, "
          f"best validation {100 * (b['best_val'] - a['best_val']):+.2f} points")


if __name__ == "__main__":
    main()
