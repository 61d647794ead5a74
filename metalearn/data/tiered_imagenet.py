"""tieredImageNet (Ren et al. 2018): 608 ImageNet classes in 34 categories, split by category into
351 / 97 / 160 classes (20 / 6 / 8 categories), 84x84 RGB.

Reads, under dataset.root, either

1. the released files ``{train,val,test}_images_png.pkl`` (a list of PNG-encoded images) with
   ``{train,val,test}_labels.pkl`` (``label_specific``: class index per image, and
   ``label_specific_str``: the class wnids), or
2. class folders ``{train,val,test}/<wnid>/*.jpg``.

The pickles also give each class's category (``label_general``), kept as its superclass for episodes
drawn within one category (sampler.within=superclass); class folders carry no category.

The split is the one the files carry (the release is already split by category); when all three
are complete their class counts are the standard 351 / 97 / 160, and anything else is reported.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from metalearn.config import MiniImageNetConfig
from metalearn.data.cache import cached
from metalearn.data.catalog import CHECKED, STORE_INDEX, resolve_root
from metalearn.data.decode import decode_classes, decode_image, image_files, load_pickle, nchw
from metalearn.data.image_folder import class_folders
from metalearn.data.prepared import read_index, store_classes
from metalearn.data.store import SPLITS, ImageStore
from metalearn.errors import MetalearnError
from metalearn.registry import DATASETS

FORMAT_VERSION = 2  # 2: each class's superclass (label_general)
log = logging.getLogger("metalearn")
HOW_TO_GET = ("Make it from your ImageNet with `metalearn-data prepare tiered_imagenet imagenet=/path/to/ILSVRC2012/"
              "train`, or put in dataset.root the released files (train_images_png.pkl, train_labels.pkl and the same for "
              "val and test, from Ren et al.'s tiered-imagenet.tar, github.com/renmengye/few-shot-ssl-public), or "
              "class folders train/<wnid>/*.jpg, val/<wnid>/*.jpg, test/<wnid>/*.jpg.")


def _layout(root: Path) -> str:
    if (root / STORE_INDEX).is_file():
        return "store"
    if all((root / f"{s}_images_png.pkl").is_file() and (root / f"{s}_labels.pkl").is_file() for s in SPLITS):
        return "pickles"
    if all((root / s).is_dir() for s in SPLITS):
        return "folders"
    found = sorted(p.name for p in root.iterdir())[:10] if root.is_dir() else []
    raise MetalearnError(f"no tieredImageNet files found in {root} (it holds: {found or 'nothing'}). {HOW_TO_GET}")


def _png_bytes(pngs: list, i: int) -> bytes:
    return np.asarray(pngs[i], dtype=np.uint8).tobytes()


def _from_pickles(root: Path, size: int) -> dict:
    """The label files first (small) to size the store, then one split's PNG pickle at a time decoded
    into it and dropped: building holds the store plus one split's PNG bytes."""
    plan, groups = [], []  # (split, class name, rows, images in the split); each class's superclass
    for s in SPLITS:
        labels = load_pickle(root / f"{s}_labels.pkl", HOW_TO_GET)
        y = np.asarray(labels["label_specific"])
        names = list(labels.get("label_specific_str") or [f"{s}_{i}" for i in range(int(y.max()) + 1)])
        plan += [(s, str(name), np.flatnonzero(y == c), len(y)) for c, name in enumerate(names)]
        general = np.asarray(labels["label_general"]) if "label_general" in labels else None
        general_names = list(labels.get("label_general_str") or [])
        for c in range(len(names)):
            rows = np.flatnonzero(y == c)
            g = int(general[rows[0]]) if general is not None and len(rows) else -1
            groups.append(str(general_names[g]) if 0 <= g < len(general_names) else f"superclass_{g}")
    images = torch.empty((sum(len(rows) for *_, rows, _ in plan), size, size, 3), dtype=torch.uint8)
    i = 0
    for s in SPLITS:
        pngs = load_pickle(root / f"{s}_images_png.pkl", HOW_TO_GET)
        for split, _, rows, n_labels in plan:
            if split != s:
                continue
            if len(pngs) != n_labels:
                raise MetalearnError(f"{s}_images_png.pkl has {len(pngs)} images but {s}_labels.pkl {n_labels} labels; "
                                     f"one of them is truncated. {HOW_TO_GET}")
            for r in rows:
                images[i] = torch.from_numpy(decode_image(_png_bytes(pngs, r), f"{s}_images_png.pkl[{r}]", size, 3))
                i += 1
        del pngs
    return {"images": nchw(images), "counts": torch.tensor([len(rows) for *_, rows, _ in plan]),
            "names": [name for _, name, _, _ in plan], "split": [s for s, *_ in plan], "groups": groups}


def _from_folders(root: Path, size: int) -> dict:
    classes, split_of = [], []
    for s in SPLITS:
        for folder in class_folders(root / s):
            classes.append((folder.name, [str(p) for p in image_files(folder)]))
            split_of.append(s)
    data = decode_classes(classes, size, 3)
    data["split"] = split_of
    return data


@DATASETS.register("tiered_imagenet")
def build_tiered_imagenet(cfg: MiniImageNetConfig) -> ImageStore:
    root = resolve_root(cfg.root, "tiered_imagenet")
    layout = _layout(root)
    build = {"pickles": _from_pickles, "folders": _from_folders,
             "store": lambda r, size: store_classes(r, "tiered_imagenet", size)}[layout]
    stamp = [[str(p), os.path.getsize(p), os.path.getmtime(p)] for p in sorted(root.iterdir()) if p.name != CHECKED]
    key = {"v": FORMAT_VERSION, "root": str(root.resolve()), "layout": layout, "size": cfg.image_size, "files": stamp}
    if layout == "store" and read_index(root)["image_size"] == cfg.image_size:
        data = build(root, cfg.image_size)  # the store is already decoded: no second copy in the cache
    else:
        data = cached(cfg.cache_dir, "tiered_imagenet", key, lambda: build(root, cfg.image_size))
    split_of = np.array(data["split"])
    splits = {s: np.flatnonzero(split_of == s) for s in SPLITS}
    standard = json.loads((Path(__file__).parent / "splits" / "tiered_imagenet.json").read_text())["classes"]
    counts = {s: len(v) for s, v in splits.items()}
    if counts != standard:
        log.warning("tieredImageNet in %s has %s classes per split, not the standard %s: a subset or another "
                    "version", root, counts, standard)
    groups = {"class_groups": list(data["groups"]), "group_by": "superclass"} if "groups" in data else {}
    return ImageStore.from_classes(data["images"], data["counts"].numpy(), data["names"], splits,
                                   meta={"name": "tiered_imagenet", "layout": layout}, **groups)
