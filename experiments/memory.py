"""Peak memory of a 60,000-image 84x84 dataset: is it held once, as uint8, plus one batch?

Writes a full-size miniImageNet (100 classes of the standard split x 600 images, 84x84 RGB, random
pixels) in two real on-disk formats, the cache pickles and class folders of JPEGs, then measures,
each in a fresh process, the peak resident memory above that of a process that has
only imported torch, metalearn and PIL's decoders (VmHWM, Linux):

1. building the store from the pickles (first run: decode, write the cache);
2. building it from the class folders;
3. a training run's data path: the store loaded from the cache, 300 meta-batches of 4 episodes
   (5-way, 1+15 per class) gathered, normalised and batched as the trainer does.

    python experiments/memory.py              # about 3 minutes, 4 GB of temporary disk
    python experiments/memory.py --no-folders # pickles and cache only (about 1 minute)

The goal (issue 6): no more than the uint8 size plus one batch. A pickle must be unpickled whole,
so building from the pickles also holds one split's pickle; that is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MB = 1024 * 1024
PER_CLASS, SIZE = 600, 84

CHILD = r"""
import json, re, sys
import torch
from metalearn.config import MiniImageNetConfig
from metalearn.data.mini_imagenet import build_mini_imagenet
from metalearn.tasks.episodes import EpisodeSampler, TaskSpec, gather
from PIL import Image
Image.init()  # the image decoders' code, loaded by any reader, is part of the baseline
# VmHWM, this process's own high-water mark (ru_maxrss would include the parent's RSS at fork)
peak = lambda: int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
mode, root, cache = sys.argv[1:4]
out = {"baseline": peak()}
if mode != "baseline":
    store = build_mini_imagenet(MiniImageNetConfig(root=root, cache_dir=cache))
    if mode == "train":
        sampler = EpisodeSampler(store, "train", TaskSpec(ways=5, shots=1, queries=15), seed=0)
        for step in range(300):
            batch = gather(store, sampler.plans(4 * step, 4))
            out["batch_bytes"] = batch.support.nbytes + batch.query.nbytes
out["peak"] = peak()
print(json.dumps(out))
"""


def write_pickles(root: Path, split: dict[str, list[str]], rng: np.random.Generator) -> int:
    """The cache pickles, one per split; returns the largest pickle's size in bytes."""
    largest = 0
    for s, wnids in split.items():
        data = rng.integers(0, 256, (len(wnids) * PER_CLASS, SIZE, SIZE, 3), dtype=np.uint8)
        classes = {w: list(range(i * PER_CLASS, (i + 1) * PER_CLASS)) for i, w in enumerate(wnids)}
        path = root / f"mini-imagenet-cache-{s}.pkl"
        with open(path, "wb") as f:
            pickle.dump({"image_data": data, "class_dict": classes}, f, protocol=4)
        largest = max(largest, path.stat().st_size)
        del data
    return largest


def write_folders(root: Path, split: dict[str, list[str]], rng: np.random.Generator) -> None:
    from PIL import Image

    for wnids in split.values():
        for w in wnids:
            (root / w).mkdir(parents=True)
            block = rng.integers(0, 256, (PER_CLASS, SIZE, SIZE, 3), dtype=np.uint8)
            for k, a in enumerate(block):
                Image.fromarray(a).save(root / w / f"{w}_{k:04d}.jpg", quality=90)


def measure(mode: str, root: Path, cache: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, mode, str(root), str(cache)], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-folders", action="store_true", help="skip the class-folder (JPEG) build")
    ap.add_argument("--tmp", default=None, help="folder for the temporary dataset (default: the system's)")
    args = ap.parse_args()
    from metalearn.data.mini_imagenet import standard_split

    split = standard_split()
    n = sum(map(len, split.values())) * PER_CLASS
    uint8 = n * SIZE * SIZE * 3
    work = Path(tempfile.mkdtemp(prefix="metalearn-memory-", dir=args.tmp))
    rng = np.random.default_rng(0)
    try:
        (work / "pickles").mkdir()
        largest_pickle = write_pickles(work / "pickles", split, rng)
        base = measure("baseline", work / "pickles", work / "cache")["peak"]
        rows = [("build from cache pickles (first run)", measure("build", work / "pickles", work / "cache"),
                 largest_pickle)]
        if not args.no_folders:
            write_folders(work / "folders", split, rng)
            rows.append(("build from class folders (JPEG)", measure("build", work / "folders", work / "cache_f"), 0))
        train = measure("train", work / "pickles", work / "cache")  # the cache written by the first build
        rows.append(("training data path (cached store, 300 meta-batches)", train, 0))
        batch = train["batch_bytes"]
        print(f"dataset: {n:,} images {SIZE}x{SIZE}x3, uint8 size {uint8 / MB:,.0f} MB; one meta-batch "
              f"(4 episodes of 5x16 images, float32) {batch / MB:,.1f} MB; import baseline {base / MB:,.0f} MB")
        print(f"{'what':<54} {'peak above baseline':>20} {'goal (uint8 + batch)':>21} {'met':>4}")
        for what, r, extra in rows:
            above, goal = r["peak"] - base, uint8 + batch + extra
            note = f" + one split's pickle ({extra / MB:,.0f} MB)" if extra else ""
            print(f"{what:<54} {above / MB:>17,.0f} MB {goal / MB:>18,.0f} MB {'yes' if above <= goal else 'NO':>4}"
                  f"{note}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
