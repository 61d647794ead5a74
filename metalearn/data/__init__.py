"""Datasets: each builder turns its config into an ImageStore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from metalearn.data.store import ImageStore
from metalearn.errors import MetalearnError

DATASETS = ("synthetic", "omniglot", "mini_imagenet", "tiered_imagenet", "cifar_fs", "fc100", "image_folder")


def build_store(cfg: Any) -> ImageStore:
    """Build (or load from cache) the store a dataset config describes."""
    name = cfg.name
    root = getattr(cfg, "root", None)
    if root and Path(str(root)).expanduser().exists() and not Path(str(root)).expanduser().is_dir():
        raise MetalearnError(f"dataset.root={root} is a file, not a folder; give the folder that holds the dataset "
                             f"({name}'s archives or class folders), not a file inside it")
    if name == "synthetic":
        from metalearn.config import SyntheticConfig
        from metalearn.data.synthetic import build_synthetic

        return build_synthetic(_typed(SyntheticConfig, cfg))
    if name == "omniglot":
        from metalearn.config import OmniglotConfig
        from metalearn.data.omniglot import build_omniglot

        return build_omniglot(_typed(OmniglotConfig, cfg))
    if name in ("mini_imagenet", "tiered_imagenet"):
        from metalearn.config import MiniImageNetConfig

        if name == "mini_imagenet":
            from metalearn.data.mini_imagenet import build_mini_imagenet as build
        else:
            from metalearn.data.tiered_imagenet import build_tiered_imagenet as build
        return build(_typed(MiniImageNetConfig, cfg))
    if name in ("cifar_fs", "fc100"):
        from metalearn.config import CifarConfig
        from metalearn.data.cifar import build_cifar

        return build_cifar(_typed(CifarConfig, cfg))
    if name == "image_folder":
        from metalearn.config import ImageFolderConfig
        from metalearn.data.image_folder import build_image_folder

        return build_image_folder(_typed(ImageFolderConfig, cfg))
    raise MetalearnError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def _typed(schema: type, cfg: Any) -> Any:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))


__all__ = ["DATASETS", "ImageStore", "build_store"]
