"""Test-time augmentation, measured as a lever (issue 39): an embedding run's test episodes scored with each
image's code averaged over `--copies` random affine copies of it (the first copy is the image itself), next
to the plain score on the same episodes, with the paired difference.

    python scripts/tta_eval.py RUN --ways 20 --within alphabet --disjoint-drawers --copies 8
    python scripts/tta_eval.py RUN --ways 5 --copies 8 --rotate 10 --scale 0.1 --shift 0.1

Inductive: every image is augmented on its own, and a query's code never depends on another query.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from omegaconf import DictConfig

from metalearn.api import restore_method
from metalearn.config import AugmentConfig
from metalearn.data import build_store
from metalearn.engine.evaluate import encode_distinct
from metalearn.methods.base import accuracy, fp32
from metalearn.stats import paired_difference
from metalearn.tasks.augment import random_affine
from metalearn.tasks.episodes import EpisodeSampler, TaskSpec, episode_labels


def averaged_codes(method, store, ids: np.ndarray, copies: int, aug: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    distinct, inverse = np.unique(ids, return_inverse=True)
    background = float(store.normalize(torch.zeros(())))
    torch.manual_seed(0)
    codes = []
    with torch.no_grad():
        for i in range(0, len(distinct), 1024):
            x = store.load(distinct[i:i + 1024], "cpu")
            total = fp32(method.encode(x))
            for _ in range(copies - 1):
                total = total + fp32(method.encode(random_affine(x, aug, background)))
            codes.append(total / copies)
    return torch.cat(codes), torch.from_numpy(inverse.reshape(ids.shape))


def scores(method, codes: torch.Tensor, rows: torch.Tensor, ways: int, shots: int, queries: int) -> np.ndarray:
    out = []
    with torch.no_grad():
        for start in range(0, rows.shape[0], 50):
            z = codes[rows[start:start + 50]]
            t = z.shape[0]
            logits = method.head(z[:, : ways * shots], episode_labels(t, ways, shots), z[:, ways * shots:], ways)
            out.append(accuracy(logits, episode_labels(t, ways, queries), 1))
    return torch.cat(out).numpy().astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--ways", type=int, default=20)
    ap.add_argument("--within", default=None)
    ap.add_argument("--disjoint-drawers", action="store_true")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--rotate", type=float, default=10.0)
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--shift", type=float, default=0.1)
    args = ap.parse_args()
    method, ckpt = restore_method(args.run, "last", "cpu")
    method.eval()
    saved = ckpt["config"]
    store = build_store(DictConfig(saved["dataset"]))
    spec = TaskSpec(args.ways, 1, saved["queries"], args.within, args.disjoint_drawers)
    plans = EpisodeSampler(store, "test", spec, 2).plans(0, args.episodes)
    aug = AugmentConfig(enabled=True, rotate=args.rotate, scale=args.scale, shift=args.shift)
    plain_codes, rows = encode_distinct(method, store, plans.image_ids(), torch.device("cpu"))
    plain = scores(method, plain_codes, rows, spec.ways, 1, spec.queries)
    tta_codes, rows = averaged_codes(method, store, plans.image_ids(), args.copies, aug)
    tta = scores(method, tta_codes, rows, spec.ways, 1, spec.queries)
    p = paired_difference(tta, plain)
    print(f"{spec.tag}, {args.episodes} episodes (digest {plans.digest()}): plain {100 * plain.mean():.2f}%, "
          f"{args.copies} copies {100 * tta.mean():.2f}%, paired {100 * p.mean:+.2f} ± {100 * p.half_width:.2f} "
          f"(p={p.p_value:.2g})")


if __name__ == "__main__":
    main()
