"""Test-time readouts of a trained Meta-Baseline / ProtoNet encoder, measured as levers on validation (issue 39):
other ways to turn the same network's codes into a query's class, each scored against the run's own head on
the same episodes (paired), without and with test-time copies. Every readout is inductive: a query's class
depends on the support images and on itself only.

    python experiments/readout_levers.py outputs/val/mb96_el16 --split val            # 20-way within one alphabet
    python experiments/readout_levers.py outputs/val/mb96_el16 --split val --copies 32 --elastic-alpha 16

Readouts (cosine to class centroids unless said):
  stage-1 member   the run's own probabilities averaged with its pre-training stage's encoder's (weight w)
  centre l         codes minus l x the episode's support mean (the characters of one alphabet share a style)
  maha b           Mahalanobis distance with the pooled within-class covariance of the support images' copies,
                   shrunk towards its mean variance by b (needs --copies > 1)
  max of 3x3       Conv-4's last map read by a max over all of it: its floor max-pool reads the top-left 2x2 only
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
from metalearn.methods.base import fp32
from metalearn.stats import paired_difference, t_interval
from metalearn.tasks.augment import random_affine
from metalearn.tasks.episodes import EpisodeSampler, TaskSpec, episode_labels


def accuracy(logits: torch.Tensor, ways: int, queries: int) -> np.ndarray:
    labels = episode_labels(logits.shape[0], ways, queries)
    return (logits.argmax(-1) == labels).double().mean(-1).numpy()


def cosine(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return F.normalize(q, dim=-1) @ F.normalize(s, dim=-1).transpose(1, 2)


def copies_of(encode, store, ids: np.ndarray, tta: TTAConfig) -> torch.Tensor:
    """Each distinct image's codes, one per copy (the first the image itself): [distinct, copies, d]. The same
    copies as metalearn.engine.evaluate.encode_distinct draws, kept apart instead of averaged."""
    out = []
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(tta.seed)
        background = float(store.normalize(torch.zeros(())))
        for i in range(0, len(ids), 500):
            x = store.load(ids[i:i + 500], torch.device("cpu"))
            codes = [fp32(encode(x)).flatten(1)]
            codes += [fp32(encode(random_affine(x, tta, background))).flatten(1) for _ in range(tta.copies - 1)]
            out.append(torch.stack(codes, 1))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--split", default="val")
    ap.add_argument("--ways", type=int, default=20)
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--elastic-alpha", type=float, default=0.0)
    args = ap.parse_args()
    torch.manual_seed(0)
    method, ckpt = restore_method(args.run, "last", "cpu")
    saved, ways = ckpt["config"], args.ways
    store = build_store(DictConfig(saved["dataset"]))
    within = args.ways == 20
    spec = TaskSpec(ways, 1, saved["queries"], "alphabet" if within else None, within)
    plans = EpisodeSampler(store, args.split, spec, 2).plans(0, args.episodes)
    tta = TTAConfig(copies=args.copies, elastic_alpha=args.elastic_alpha) if args.copies > 1 else None
    q = spec.queries
    codes, rows = encode_distinct(method, store, plans.image_ids(), torch.device("cpu"), tta)
    z = codes[rows].flatten(2)
    zs, zq = z[:, :ways], z[:, ways:]
    with torch.no_grad():
        own_logits = fp32(method.head(codes[rows][:, :ways], episode_labels(len(plans), ways, 1),
                                      codes[rows][:, ways:], ways))
    own = accuracy(own_logits, ways, q)
    res: dict[str, np.ndarray] = {}
    stage = Path(args.run) / "pretrain"
    if (stage / "config.yaml").is_file():
        first, _ = restore_method(stage, "last", "cpu")
        c1, r1 = encode_distinct(first, store, plans.image_ids(), torch.device("cpu"), tta)
        with torch.no_grad():
            p1 = fp32(method.head(c1[r1][:, :ways], episode_labels(len(plans), ways, 1), c1[r1][:, ways:],
                                  ways)).softmax(-1)
        for w in (0.25, 0.5):
            res[f"stage-1 member, w {w}"] = accuracy((1 - w) * own_logits.softmax(-1) + w * p1, ways, q)
    for lam in (0.25, 0.5, 1.0):
        m = zs.mean(1, keepdim=True)
        res[f"centre {lam}"] = accuracy(cosine(zq - lam * m, zs - lam * m), ways, q)
    if tta is not None:
        distinct, inverse = np.unique(plans.image_ids(), return_inverse=True)
        each = copies_of(method.encode, store, distinct, tta)[torch.from_numpy(inverse.reshape(plans.image_ids().shape))]
        us = F.normalize(each[:, :ways], dim=-1)  # [E, ways, copies, d]
        uq = F.normalize(each[:, ways:], dim=-1).mean(2)
        mu = us.mean(2)
        dev = (us - mu[:, :, None]).flatten(1, 2)
        cov = dev.transpose(1, 2) @ dev / dev.shape[1]
        scale = cov.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * torch.eye(cov.shape[-1])
        for beta in (0.9, 0.5, 0.1):
            inv = torch.cholesky_inverse(torch.linalg.cholesky((1 - beta) * cov + beta * scale))
            diff = uq[:, :, None] - mu[:, None]
            res[f"maha {beta}"] = accuracy(-torch.einsum("eqnd,edf,eqnf->eqn", diff, inv, diff), ways, q)
    features = getattr(method.backbone, "features", None)
    if features is not None and isinstance(features[-1], torch.nn.MaxPool2d):
        class LastMap:  # the map before the last max-pool, its maximum over all positions
            def encode(self, x: torch.Tensor) -> torch.Tensor:
                return features[:-1](x).amax((-1, -2))
        c3, r3 = encode_distinct(LastMap(), store, plans.image_ids(), torch.device("cpu"), tta)
        res["max of 3x3"] = accuracy(cosine(c3[r3][:, ways:], c3[r3][:, :ways]), ways, q)
    print(f"{args.run}: {spec.tag}, {args.split}, {args.episodes} episodes (digest {plans.digest()}), "
          f"{args.copies} copies{f', elastic {args.elastic_alpha:g}' if args.elastic_alpha else ''}")
    print(f"  its own head: {100 * own.mean():.2f} ± {100 * t_interval(own).half_width:.2f}%")
    for name, acc in res.items():
        d = paired_difference(acc, own)
        print(f"  {name}: {100 * acc.mean():.2f}%, vs its own head {100 * d.mean:+.2f} ± {100 * d.half_width:.2f}")


if __name__ == "__main__":
    setup_logging()
    report_errors(main)
