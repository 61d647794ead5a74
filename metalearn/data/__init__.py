"""Datasets: each builder turns its config into an ImageStore.

The names below load on first use (PEP 562), so torch-free modules of this package (catalog: what
`metalearn-data list` reads) import without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metalearn.data.store import ImageStore


def build_store(cfg: Any) -> ImageStore:
    """Build (or load from cache) the store a dataset config describes."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from metalearn.config import SCHEMAS
    from metalearn.errors import MetalearnError
    from metalearn.registry import DATASETS

    name = cfg.name
    root = getattr(cfg, "root", None)
    if root and Path(str(root)).expanduser().exists() and not Path(str(root)).expanduser().is_dir():
        raise MetalearnError(f"dataset.root={root} is a file, not a folder; give the folder that holds the dataset "
                             f"({name}'s archives or class folders), not a file inside it")
    schema = SCHEMAS["dataset"].get(name)
    build = DATASETS.builder(name)  # an unknown name: one line with the known ones
    return build(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg)) if schema else cfg)


def __getattr__(name: str) -> Any:
    if name == "ImageStore":
        from metalearn.data.store import ImageStore

        return ImageStore
    raise AttributeError(f"module 'metalearn.data' has no attribute {name!r}")


__all__ = ["ImageStore", "build_store"]
