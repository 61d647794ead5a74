"""Another dataset's images as a trained run's inputs: metalearn-eval run=<run> dataset=<another> (cross-domain).

The target dataset is built at the run's image size; its channels are matched to the run's where that has a
meaning (RGB -> grey by ITU-R BT.601 luma, grey -> RGB by repeating the channel), and it is normalised with the
run's own training statistics, as the run's own test images are: the network sees the other domain through
the same preprocessing, and nothing of the target's test split leaks into it. A user's image_folder has no
standard split, so every one of its classes is a test class (as Meta-Dataset's held-out datasets are).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from metalearn.config import config_dir
from metalearn.data.store import ImageStore
from metalearn.errors import MetalearnError

LUMA = (0.299, 0.587, 0.114)


def options() -> list[str]:
    return sorted(p.stem for p in (Path(config_dir()) / "dataset").glob("*.yaml"))


def target_config(name: str, root: str | None, image_size: int, held_out: bool = False) -> DictConfig:
    """The dataset option `name` (configs/dataset/<name>.yaml) at the run's image size, read from `root`; `held_out`:
    a cross-domain test's target, where a user's image_folder is all test classes."""
    path = Path(config_dir()) / "dataset" / f"{name}.yaml"
    if not path.is_file():
        raise MetalearnError(f"dataset={name} is not a dataset option; choose one of: {', '.join(options())}")
    cfg = OmegaConf.load(path)
    cfg.pop("defaults", None)
    cfg.image_size = image_size
    if root is not None:
        cfg.root = root
    if held_out and name == "image_folder":  # a user's folder has no standard split: the whole held-out domain is the test set
        cfg.split_fractions = [0, 0, 1]
    return cfg


def dataset_label(dataset: dict[str, Any]) -> str:
    """How results name a dataset config: its option's name; a multi-source run's sources joined by +; a user's
    image_folder with its folder's name (image_folder-digits), since two such folders are two datasets."""
    if dataset.get("name") == "multi":
        return "+".join(dataset["sources"])
    if dataset.get("name") == "image_folder" and dataset.get("root"):
        return f"image_folder-{Path(str(dataset['root'])).expanduser().resolve().name}"
    return str(dataset.get("name"))


def match_channels(images: torch.Tensor, want: int) -> torch.Tensor:
    """uint8 images [N, C, H, W] with `want` channels: RGB -> grey by luma, grey -> RGB by repeating; the same
    tensor when they already have them. ValueError for any other pair (no meaningful conversion)."""
    have = images.shape[1]
    if (have, want) == (3, 1):
        weights = torch.tensor(LUMA).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    if (have, want) == (1, 3):
        return images.expand(-1, 3, -1, -1).contiguous()
    if have != want:
        raise ValueError(f"has {have}-channel images, not the {want}")
    return images


def as_run_input(store: ImageStore, preprocess: dict[str, Any], source: str, target: str) -> ImageStore:
    """`store` with the run's channels and normalisation; refused, with the reason, where no match is meaningful."""
    try:
        images = match_channels(store.images, int(preprocess["channels"]))
    except ValueError as e:
        raise MetalearnError(f"dataset={target} {e} the run ({source}) takes; no conversion between them has a "
                             f"meaning, so it is not scored") from None
    if store.image_shape[1:] != (preprocess["image_size"],) * 2:
        raise MetalearnError(f"dataset={target} was built at {store.image_shape[1:]} pixels, not the run's "
                             f"{preprocess['image_size']}: its loader does not take dataset.image_size")
    split = store.splits.get("test")
    if split is None or split.size < 2:
        raise MetalearnError(f"dataset={target}'s test split has {0 if split is None else split.size} classes; a "
                             f"cross-domain test needs at least two (its split: dataset.split_fractions)")
    return replace(store, images=images, mean=float(preprocess["mean"]), std=float(preprocess["std"]),
                   meta={**store.meta, "cross_domain": {"trained_on": source, "tested_on": target}},
                   _normalized=None)
