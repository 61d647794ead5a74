"""Test-time augmentation and ensembles of runs, measured as levers (issue 39): an embedding run's test
episodes scored with each image's code averaged over `--copies` random affine copies of it (the first copy
is the image itself; metalearn-eval's tta.copies, the same copies), next to the plain score on the same
episodes, with the paired difference. Given
several runs (seeds of one preset), it also scores their ensemble: each query's class probabilities
averaged over the runs, plain and with the copies. The runs may differ in how they render the images
(dataset.image_size), not in which images they read.

    python scripts/tta_eval.py RUN --ways 20 --within alphabet --disjoint-drawers --copies 8
    python scripts/tta_eval.py RUN --ways 5 --copies 8 --rotate 10 --scale 0.1 --shift 0.1
    python scripts/tta_eval.py RUN --copies 32 --elastic-alpha 16 --elastic-sigma 4   # elastic copies too
    python scripts/tta_eval.py VAL_RUN --split val --ways 20 --within alphabet --disjoint-drawers   # to choose
    python scripts/tta_eval.py RUN_SEED0 RUN_SEED1 --ways 20 --within alphabet --disjoint-drawers
    python scripts/tta_eval.py PROTONET_RUN --ways 20 --within alphabet --disjoint-drawers --head tim
    python scripts/tta_eval.py RUN --dataset-root ../shared/data/omniglot   # from another folder than training's

Every image is augmented on its own, so an inductive method stays inductive (a query's code never depends
on another query); a transductive run (TIM) stays transductive. `--head tim` replaces each run's own
classifier by TIM-GD's inference (the paper's defaults) on the run's codes: TIM on features trained otherwise,
and always transductive, which the output says.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from omegaconf import DictConfig

from metalearn.api import restore_method
from metalearn.cli import report_errors
from metalearn.config import TTAConfig
from metalearn.console import setup_logging
from metalearn.data import build_store
from metalearn.data.store import ImageStore
from metalearn.engine.evaluate import encode_distinct, tim_on_codes
from metalearn.methods.base import fp32
from metalearn.stats import paired_difference, t_interval
from metalearn.tasks.episodes import EpisodeSampler, TaskSpec, episode_labels

WHERE = ("root", "cache_dir")  # where the files are, not which images: runs may name one place differently


def probabilities(head, codes: torch.Tensor, rows: torch.Tensor, ways: int, shots: int,
                  queries: int) -> torch.Tensor:
    """Each episode's query class probabilities [episodes, ways * queries, ways], by head(zs, labels, zq, ways)."""
    out = []
    with torch.no_grad():
        for start in range(0, rows.shape[0], 50):
            z = codes[rows[start:start + 50]]
            t = z.shape[0]
            logits = head(z[:, : ways * shots], episode_labels(t, ways, shots), z[:, ways * shots:], ways)
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
    ap.add_argument("--elastic-alpha", type=float, default=0.0, help="the copies' elastic distortion (0: affine only)")
    ap.add_argument("--elastic-sigma", type=float, default=4.0)
    ap.add_argument("--split", default="test", help="the class split whose episodes are scored (val: to choose)")
    ap.add_argument("--dataset-root", default=None,
                    help="where the dataset is now, when it moved since training or the runs saved a relative root")
    ap.add_argument("--head", choices=("own", "tim"), default="own",
                    help="each run's own classifier, or TIM-GD's transductive inference on its codes")
    args = ap.parse_args()
    tta = TTAConfig(copies=args.copies, rotate=args.rotate, scale=args.scale, shift=args.shift,
                    elastic_alpha=args.elastic_alpha, elastic_sigma=args.elastic_sigma)
    plain_probs, tta_probs = [], []
    stores: dict[str, ImageStore] = {}  # one per dataset configuration: runs may render the images at other sizes
    for i, run in enumerate(args.runs):
        method, ckpt = restore_method(run, "last", "cpu")
        method.eval()
        saved = ckpt["config"]
        key = repr(sorted((k, v) for k, v in saved["dataset"].items() if k not in WHERE))
        if key not in stores:
            dataset = dict(saved["dataset"], **({"root": args.dataset_root} if args.dataset_root else {}))
            stores[key] = build_store(DictConfig(dataset))
        store = stores[key]
        if i == 0:
            first_store = store
            spec = TaskSpec(args.ways, 1, saved["queries"], args.within, args.disjoint_drawers)
            plans = EpisodeSampler(store, args.split, spec, 2).plans(0, args.episodes)
        elif not store.same_images(first_store):
            raise SystemExit(f"{run} reads other images than {args.runs[0]} (its dataset configuration lists other "
                             "classes, splits or drawers); an ensemble is scored on one dataset's episodes")
        head = tim_on_codes if args.head == "tim" else method.head
        codes, rows = encode_distinct(method, store, plans.image_ids(), torch.device("cpu"))
        if i == 0:  # the reference of every paired difference: the first run as it is, its own head, plain
            reference = per_episode(probabilities(method.head, codes, rows, spec.ways, 1, spec.queries), spec.ways,
                                    spec.queries)
        plain_probs.append(probabilities(head, codes, rows, spec.ways, 1, spec.queries))
        codes, rows = encode_distinct(method, store, plans.image_ids(), torch.device("cpu"), tta)
        tta_probs.append(probabilities(head, codes, rows, spec.ways, 1, spec.queries))
    kind = "transductive: TIM-GD on each run's codes" if args.head == "tim" else "each run's own head"
    print(f"{spec.tag}, {args.episodes} episodes (digest {plans.digest()}), {kind}")
    head_name = "TIM head" if args.head == "tim" else "plain"
    rows_out = [(f"{run}: {head_name}", per_episode(p, spec.ways, spec.queries))
                for run, p in zip(args.runs, plain_probs, strict=True)]
    rows_out += [(f"{run}: {args.copies} copies", per_episode(p, spec.ways, spec.queries))
                 for run, p in zip(args.runs, tta_probs, strict=True)]
    if len(args.runs) > 1:
        rows_out += [(f"ensemble of {len(args.runs)}: {head_name}",
                      per_episode(torch.stack(plain_probs).mean(0), spec.ways, spec.queries)),
                     (f"ensemble of {len(args.runs)}: {args.copies} copies",
                      per_episode(torch.stack(tta_probs).mean(0), spec.ways, spec.queries))]
    print(f"  {args.runs[0]}: its own head, plain (the reference): {100 * reference.mean():.2f} ± "
          f"{100 * t_interval(reference).half_width:.2f}%")
    for name, acc in rows_out[int(args.head == "own"):]:
        p = paired_difference(acc, reference)
        print(f"  {name}: {100 * acc.mean():.2f} ± {100 * t_interval(acc).half_width:.2f}%, vs the reference "
              f"{100 * p.mean:+.2f} ± {100 * p.half_width:.2f} (p={p.p_value:.2g})")

if __name__ == "__main__":
    setup_logging()
    report_errors(main)  # bad input: one line naming the problem and the fix, exit status 2, no traceback
