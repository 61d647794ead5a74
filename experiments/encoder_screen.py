"""Encoders compared by the readout Meta-Baseline starts from (issue 39): each run's codes (`method.encode`) read
by cosine similarity to the support images' codes, on one set of episodes, each run paired against the first.
It screens first stages (Classifier-Baseline runs) on validation without training their second stage, and
compares runs that render the images at other sizes (dataset.image_size): the test-time copies' elastic
distortion is given in pixels of an `--at`-pixel image and scaled to each run's size (sigma by the size ratio k,
alpha by k squared: the smoothing divides the field by sigma), so every run's copies bend the strokes alike.

    python experiments/encoder_screen.py outputs/val/mb96_el16/pretrain outputs/val/stem16_56_pretrain --split val \\
        --copies 32 --elastic-alpha 16 --elastic-sigma 4 --at 28
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from metalearn.cli import report_errors
from metalearn.config import TTAConfig
from metalearn.console import setup_logging
from metalearn.data import build_store
from metalearn.engine.evaluate import encode_distinct
from metalearn.engine.restore import restore_method
from metalearn.stats import paired_difference, t_interval
from metalearn.tasks.episodes import EpisodeSampler, TaskSpec, episode_labels


def cosine_accuracy(codes: torch.Tensor, rows: torch.Tensor, ways: int, queries: int) -> np.ndarray:
    """Each 1-shot episode's accuracy when a query takes the class of the support code nearest in angle."""
    z = F.normalize(codes[rows].flatten(2), dim=-1)
    predicted = (z[:, ways:] @ z[:, :ways].transpose(1, 2)).argmax(-1)
    return (predicted == episode_labels(len(rows), ways, queries)).double().mean(-1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="runs on one dataset; each is paired against the first")
    ap.add_argument("--split", default="val")
    ap.add_argument("--ways", type=int, default=20)
    ap.add_argument("--within", default="alphabet", help="one group per episode (none: random classes)")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--copies", type=int, default=32)
    ap.add_argument("--elastic-alpha", type=float, default=16.0, help="in pixels of an --at-pixel image")
    ap.add_argument("--elastic-sigma", type=float, default=4.0, help="in pixels of an --at-pixel image")
    ap.add_argument("--at", type=int, default=28, help="the image size the elastic settings are given at")
    args = ap.parse_args()
    within = None if args.within == "none" else args.within
    results, first_store = [], None
    for run in args.runs:
        method, ckpt = restore_method(run, "last", "cpu")
        method.eval()
        dataset = ckpt["config"]["dataset"]
        store = build_store(DictConfig(dataset))
        if first_store is None:
            spec = TaskSpec(args.ways, 1, ckpt["config"]["queries"], within, within is not None)
            plans, first_store = EpisodeSampler(store, args.split, spec, 2).plans(0, args.episodes), store
        elif not store.same_images(first_store):
            raise SystemExit(f"{run} reads other images than {args.runs[0]}; runs are compared on one dataset's episodes")
        k = dataset["image_size"] / args.at
        tta = TTAConfig(copies=args.copies, elastic_alpha=args.elastic_alpha * k * k, elastic_sigma=args.elastic_sigma * k)
        codes, rows = encode_distinct(method, store, plans.image_ids(), torch.device("cpu"),
                                      tta if args.copies > 1 else None)
        results.append((f"{run} ({dataset['image_size']} px, elastic {tta.elastic_alpha:g}/{tta.elastic_sigma:g})",
                        cosine_accuracy(codes, rows, spec.ways, spec.queries)))
    print(f"{spec.tag}, {args.split}, {args.episodes} episodes (digest {plans.digest()}), {args.copies} copies, "
          "cosine to the support codes")
    reference = results[0][1]
    for name, acc in results:
        d = paired_difference(acc, reference)
        print(f"  {name}: {100 * acc.mean():.2f} ± {100 * t_interval(acc).half_width:.2f}%, vs the first "
              f"{100 * d.mean:+.2f} ± {100 * d.half_width:.2f} (p={d.p_value:.2g})")


if __name__ == "__main__":
    setup_logging()
    report_errors(main)
