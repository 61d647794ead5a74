"""A user's own images: root/<class name>/*.{png,jpg,jpeg,...}, one folder per class.

Or two levels, root/<group>/<class name>/*.jpg (a superclass, an alphabet, a site): the classes are
then named <group>/<class> and grouped by folder, for episodes drawn within one group
(sampler.within=folder).

Classes are split into train/val/test by `split_fractions` and `split_seed`, or by a split file
(JSON: {"train": [class names], "val": [...], "test": [...]}). Images are resized to
image_size x image_size with `channels` channels (1: grey, 3: RGB), decoded once and cached.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from metalearn.config import ImageFolderConfig
from metalearn.data.cache import cached
from metalearn.data.decode import decode_classes, image_files
from metalearn.data.store import SPLITS, ImageStore, split_by_fractions
from metalearn.errors import MetalearnError
from metalearn.registry import DATASETS

FORMAT_VERSION = 1


def class_folders(root: Path) -> list[Path]:
    """Sub-folders of root that hold at least one image, sorted by name."""
    return sorted(p for p in root.iterdir() if p.is_dir() and image_files(p))


def two_level_classes(root: Path) -> list[Path]:
    """root/<group>/<class>/ folders holding images, sorted; empty when root holds class folders directly."""
    if class_folders(root):
        return []
    return [c for g in sorted(p for p in root.iterdir() if p.is_dir()) for c in class_folders(g)]


def read_split_file(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """{"train": [...], "val": [...], "test": [...]} of class names -> class ids; every name must exist."""
    try:
        lists = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MetalearnError(f"cannot read the split file {path}: {e}. It must be JSON like "
                             f'{{"train": ["class_a", ...], "val": [...], "test": [...]}}') from None
    index = {n: i for i, n in enumerate(names)}
    out = {}
    for split in SPLITS:
        wanted = lists.get(split, [])
        unknown = [n for n in wanted if n not in index]
        if unknown:
            raise MetalearnError(f"the split file {path} names {split} classes with no folder under the root: "
                                 f"{unknown[:5]}")
        out[split] = np.array(sorted(index[n] for n in wanted), dtype=np.int64)
    return out


@DATASETS.register("image_folder")
def build_image_folder(cfg: ImageFolderConfig) -> ImageStore:
    if cfg.root is None:
        raise MetalearnError("dataset=image_folder needs dataset.root=PATH, a folder with one sub-folder of images "
                             "per class (root/<class>/*.jpg)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise MetalearnError(f"dataset.root={root} does not exist; it must hold one sub-folder of images per class")
    if cfg.channels not in (1, 3):
        raise MetalearnError(f"dataset.channels must be 1 (grey) or 3 (RGB), got {cfg.channels}")
    folders = class_folders(root)
    nested = two_level_classes(root)
    if len(folders) < 2 and len(nested) < 2:
        raise MetalearnError(f"{root} has {len(folders)} class folders with images; a few-shot dataset needs at least "
                             f"two (root/<class>/*.jpg, or root/<group>/<class>/*.jpg)")
    if nested:
        files = [(f"{f.parent.name}/{f.name}", [str(p) for p in image_files(f)]) for f in nested]
    else:
        files = [(f.name, [str(p) for p in image_files(f)]) for f in folders]
    single = [name for name, fs in files if len(fs) < 2]
    if single:  # said first: whatever the split, such a class can never give a support image and a query
        them = "it" if len(single) == 1 else "them"
        raise MetalearnError(f"class {', '.join(single[:3])}{' ...' if len(single) > 3 else ''} of {root} "
                             f"{'has' if len(single) == 1 else 'have'} only 1 image; every class needs at least "
                             f"shots+queries images (2 at the least: a support image and a query); add images to "
                             f"{them} or remove {them} from the dataset.")
    key = {"v": FORMAT_VERSION, "root": str(root.resolve()), "size": cfg.image_size, "channels": cfg.channels,
           "files": [[name, len(fs), max(os.path.getmtime(n) for n in fs)] for name, fs in files]}
    data = cached(cfg.cache_dir, "image_folder", key, lambda: decode_classes(files, cfg.image_size, cfg.channels))
    names = data["names"]
    if cfg.split_file:
        splits = read_split_file(Path(cfg.split_file).expanduser(), names)
    else:
        splits = split_by_fractions(len(names), list(cfg.split_fractions), cfg.split_seed)
    groups = {"class_groups": [n.split("/", 1)[0] for n in names], "group_by": "folder"} if nested else {}
    return ImageStore.from_classes(data["images"], data["counts"].numpy(), names, splits,
                                   meta={"name": "image_folder", "root": str(root)}, **groups)
