"""Train every method's smoke configuration and fingerprint what it wrote, to show a refactor changed no number.

    python scripts/smoke_identity.py --out /tmp/after.json            # this checkout
    python scripts/smoke_identity.py --out /tmp/before.json --repo /tmp/old_checkout
    python scripts/smoke_identity.py --compare /tmp/before.json /tmp/after.json

Each run is `metalearn-train debug=smoke method=<m> hardware.threads=1` in a fresh folder (the CPU is
deterministic at a fixed thread count). The fingerprint keeps every metrics.jsonl record without its
timings (episodes_per_s and the like, and each record's wall-clock `time`), the test results with their
per-episode accuracies, and a hash of each tensor of the final checkpoint (a buffer a refactor removes is
listed, not counted as a difference). The methods are every registered one (METHODS.names()), plus VARIANTS.
`--compare` prints, per method, identical or which part differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# variants beside each registered method's own smoke run (its name as method=)
# (the MAML family's task_batching=auto picks its path by timing it, so its checkpoint records which path ran: a
# busy machine can pick another, equal up to float rounding; the _loop variants fix the path)
VARIANTS = {"matching_fce": ["method=matching", "method.fce=true"],
            **{f"{m}_loop": [f"method={m}", "method.task_batching=loop"] for m in ("maml", "anil", "mamlpp")}}
TIMING = ("_per_s", "time")  # throughput and the wall-clock stamp of each record


def method_runs() -> dict[str, list[str]]:
    """Every registered method (metalearn.registry.METHODS), plus VARIANTS: name -> its overrides."""
    from metalearn.registry import METHODS

    return {**{name: [f"method={name}"] for name in METHODS.names()}, **VARIANTS}


def fingerprint(run: Path) -> dict:
    records = []
    metrics = run / "metrics.jsonl"  # pixel_nn trains nothing and writes none
    for line in (metrics.read_text().splitlines() if metrics.is_file() else []):
        r = json.loads(line)
        records.append({k: v for k, v in r.items() if not k.endswith(TIMING)})
    tests = {}
    for p in sorted((run / "eval").glob("test_*.json")):
        tests[p.name] = json.loads(p.read_text())
    import torch

    ckpt = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    weights = {k: hashlib.sha256(v.numpy().tobytes()).hexdigest()[:16] for k, v in ckpt["method"].items()}
    return {"metrics": records, "tests": tests, "weights": weights}


def run_all(repo: Path, methods: list[str]) -> dict:
    runs, out = method_runs(), {}
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as tmp:
        for name in methods:
            args = runs[name]
            folder = Path(tmp) / name
            cmd = [sys.executable, "-m", "metalearn.train", "debug=smoke", *args, "hardware.threads=1",
                   f"run_dir={folder}"]
            r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                out[name] = {"error": r.stderr[-1000:]}
                print(f"{name}: failed\n{r.stderr[-1000:]}", file=sys.stderr)
                continue
            out[name] = fingerprint(folder)
            print(f"{name}: done", file=sys.stderr)
    return out


def untimed(records):
    """metrics records without their timings (fingerprints written before `time` was left out still compare)."""
    if not isinstance(records, list):
        return records
    return [{k: v for k, v in r.items() if not k.endswith(TIMING)} for r in records]


def compare(a: dict, b: dict) -> int:
    differ = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"{name}: only in {'after' if name in b else 'before'}")
            differ += 1
            continue
        wa, wb = a[name].get("weights", {}), b[name].get("weights", {})
        shared = set(wa) & set(wb)
        parts = [k for k in ("metrics", "tests", "error") if untimed(a[name].get(k)) != untimed(b[name].get(k))]
        parts += [f"tensor {k}" for k in sorted(shared) if wa[k] != wb[k]]
        extra = [f"{'-' if k in wa else '+'}{k}" for k in sorted(set(wa) ^ set(wb))]  # a state_dict entry (un)registered
        note = f" (state_dict entries {' '.join(extra)})" if extra else ""
        print(f"{name}: {'identical' if not parts else 'differs in ' + ', '.join(parts)}{note}")
        differ += bool(parts)
    print(f"{len(set(a) | set(b)) - differ} identical, {differ} differ")
    return differ


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--methods", nargs="*", help="default: every registered method and the variants")
    ap.add_argument("--compare", nargs=2, type=Path)
    args = ap.parse_args()
    if args.compare:
        sys.exit(1 if compare(*(json.loads(p.read_text()) for p in args.compare)) else 0)
    result = run_all(args.repo.resolve(), args.methods or list(method_runs()))
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
