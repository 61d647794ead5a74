"""Datasets: each builder turns its config into an ImageStore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from metalearn.config import SCHEMAS
from metalearn.data.store import ImageStore
from metalearn.errors import MetalearnError
from metalearn.registry import DATASETS


def build_store(cfg: Any) -> ImageStore:
    """Build (or load from cache) the store a dataset config describes."""
    name = cfg.name
    root = getattr(cfg, "root", None)
    if root and Path(str(root)).expanduser().exists() and not Path(str(root)).expanduser().is_dir():
        raise MetalearnError(f"dataset.root={root} is a file, not a folder; give the folder that holds the dataset "
                             f"({name}'s archives or class folders), not a file inside it")
    schema = SCHEMAS["dataset"].get(name)
    build = DATASETS.builder(name)  # an unknown name: one line with the known ones
    return build(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg)) if schema else cfg)


__all__ = ["ImageStore", "build_store"]
