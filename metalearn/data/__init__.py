"""Datasets: each builder turns its config into an ImageStore."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from metalearn.data.store import ImageStore
from metalearn.errors import MetalearnError

DATASETS = ("synthetic", "omniglot")


def build_store(cfg: Any) -> ImageStore:
    """Build (or load from cache) the store a dataset config describes."""
    name = cfg.name
    if name == "synthetic":
        from metalearn.config import SyntheticConfig
        from metalearn.data.synthetic import build_synthetic

        return build_synthetic(_typed(SyntheticConfig, cfg))
    if name == "omniglot":
        from metalearn.config import OmniglotConfig
        from metalearn.data.omniglot import build_omniglot

        return build_omniglot(_typed(OmniglotConfig, cfg))
    raise MetalearnError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def _typed(schema: type, cfg: Any) -> Any:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))


__all__ = ["DATASETS", "ImageStore", "build_store"]
