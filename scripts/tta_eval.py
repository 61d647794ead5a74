"""Test-time augmentation and ensembles of runs, measured as levers (issue 39): an embedding run's test
episodes scored with each image's code averaged over `--copies` random affine copies of it (the first copy
is the image itself; metalearn-eval's tta.copies, the same copies), next to the plain score on the same
episodes, with the paired difference. Given
several runs (seeds of one preset), it also scores their ensemble: each query's class probabilities
averaged over the runs, plain and with the copies.

    python scripts/tta_eval.py RUN --ways 20 --within alphabet --disjoint-drawers --copies 8
    python scripts/tta_eval.py RUN --ways 5 --copies 8 --rotate 10 --scale 0.1 --shift 0.1
    python scripts/tta_eval.py RUN_SEED0 RUN_SEED1 --ways 20 --within alphabet --disjoint-drawers

Every image is augmented on its own, so an inductive method stays inductive (a query's code never depends
on another query); a transductive run (TIM) stays transductive.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from omegaconf import DictConfig

from metalearn.api import restore_method
from metalearn.config import TTAConfig
from metalearn.data import build_store
from metalearn.engine.evaluate import encode_distinct
from metalearn.methods.base import fp32
from metalearn.stats import paired_difference, t_interval
from metalearn.tasks.episodes import EpisodeSampler, TaskSpec, episode_labels

WHERE = ("root", "cache_dir")  # where the files are, not which images: runs may name one place differently


def probabilities(method, codes: torch.Tensor, rows: torch.Tensor, ways: int, shots: int,
                  queries: int) -> torch.Tensor:
    """Each episode's query class probabilities [episodes, ways * queries, ways]."""
    out = []
    with torch.no_grad():
        for start in range(0, rows.shape[0], 50):
            z = codes[rows[start:start + 50]]
            t = z.shape[0]
            logits = method.head(z[:, : ways * shots], episode_labels(t, ways, shots), z[:, ways * shots:], ways)
            out.append(fp32(logits).softmax(-1))
    return torch.cat(out)


def per_episode(probs: torch.Tensor, ways: int, queries: int) -> np.ndarray:
    """The accuracy of each episode."""
    labels = episode_labels(probs.shape[0], ways, queries)
    return (probs.argmax(-1) == labels).double().mean(-1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="one run, or several (their ensemble is scored too) on one dataset")
    ap.add_argument("--ways", type=int, default=20)
    ap.add_argument("--within", default=None)
    ap.add_argument("--disjoint-drawers", action="store_true")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--rotate", type=float, default=10.0)
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--shift", type=float, default=0.1)
    args = ap.parse_args()
    tta = TTAConfig(copies=args.copies, rotate=args.rotate, scale=args.scale, shift=args.shift)
    plain_probs, tta_probs = [], []
    for i, run in enumerate(args.runs):
        method, ckpt = restore_method(run, "last", "cpu")
        method.eval()
        saved = ckpt["config"]
        if i == 0:
            dataset = saved["dataset"]
            store = build_store(DictConfig(dataset))
            spec = TaskSpec(args.ways, 1, saved["queries"], args.within, args.disjoint_drawers)
            plans = EpisodeSampler(store, "test", spec, 2).plans(0, args.episodes)
        elif {k: v for k, v in saved["dataset"].items() if k not in WHERE} != {k: v for k, v in dataset.items()
                                                                             if k not in WHERE}:
            raise SystemExit(f"{run} was trained on another dataset configuration than {args.runs[0]}; "
                             "an ensemble is scored on one dataset's episodes")
        codes, rows = encode_distinct(method, store, plans.image_ids(), torch.device("cpu"))
        plain_probs.append(probabilities(method, codes, rows, spec.ways, 1, spec.queries))
        codes, rows = encode_distinct(method, store, plans.image_ids(), torch.device("cpu"), tta)
        tta_probs.append(probabilities(method, codes, rows, spec.ways, 1, spec.queries))
    first = per_episode(plain_probs[0], spec.ways, spec.queries)
    print(f"{spec.tag}, {args.episodes} episodes (digest {plans.digest()})")
    rows_out = [(f"{run}: plain", per_episode(p, spec.ways, spec.queries)) for run, p in zip(args.runs, plain_probs, strict=True)]
    rows_out += [(f"{run}: {args.copies} copies", per_episode(p, spec.ways, spec.queries))
                 for run, p in zip(args.runs, tta_probs, strict=True)]
    if len(args.runs) > 1:
        rows_out += [(f"ensemble of {len(args.runs)}: plain", per_episode(torch.stack(plain_probs).mean(0), spec.ways,
                                                                           spec.queries)),
                     (f"ensemble of {len(args.runs)}: {args.copies} copies",
                      per_episode(torch.stack(tta_probs).mean(0), spec.ways, spec.queries))]
    print(f"  {rows_out[0][0]}: {100 * first.mean():.2f} ± {100 * t_interval(first).half_width:.2f}%")
    for name, acc in rows_out[1:]:
        p = paired_difference(acc, first)
        print(f"  {name}: {100 * acc.mean():.2f} ± {100 * t_interval(acc).half_width:.2f}%, vs the first run plain "
              f"{100 * p.mean:+.2f} ± {100 * p.half_width:.2f} (p={p.p_value:.2g})")


if __name__ == "__main__":
    main()
