"""miniImageNet (Vinyals et al. 2016) with Ravi & Larochelle's 64/16/20 class split, 84x84 RGB.

There is no official download host, so the loader reads the three forms the dataset circulates in,
whichever it finds under dataset.root (checked in this order):

1. the cache pickles ``mini-imagenet-cache-{train,val,test}.pkl``: dicts with ``image_data``
   (uint8 N x 84 x 84 x 3) and ``class_dict`` (wnid -> row indices);
2. Ravi & Larochelle's layout: ``images/*.jpg`` with ``train.csv``, ``val.csv``, ``test.csv``
   (``filename,label`` rows);
3. ImageNet-style class folders ``<wnid>/*.jpg``, directly under root or under
   ``train/``, ``val/``, ``test/``.

The split is always the standard one (splits/mini_imagenet.json): the files only provide pixels,
and a class outside the standard lists, or a missing one, is an error.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import torch

from metalearn.config import MiniImageNetConfig
from metalearn.data.cache import cached
from metalearn.data.catalog import CHECKED, STORE_INDEX, resolve_root
from metalearn.data.decode import decode_classes, image_files, load_pickle, nchw, resize_array
from metalearn.data.prepared import read_index, store_classes
from metalearn.data.store import SPLITS, ImageStore
from metalearn.errors import MetalearnError
from metalearn.registry import DATASETS

FORMAT_VERSION = 1
HOW_TO_GET = ("miniImageNet has no official download. Make it from your ImageNet with `metalearn-data prepare "
              "mini_imagenet imagenet=/path/to/ILSVRC2012/train` (it lands where dataset.root defaults to), or put in "
              "dataset.root one of: (1) the cache pickles "
              "mini-imagenet-cache-train.pkl, mini-imagenet-cache-val.pkl, mini-imagenet-cache-test.pkl; (2) Ravi & "
              "Larochelle's images/ folder with train.csv, val.csv and test.csv; (3) ImageNet class folders "
              "<wnid>/*.jpg for the 100 classes of metalearn/data/splits/mini_imagenet.json (e.g. made from ImageNet "
              "with those CSVs).")


def standard_split() -> dict[str, list[str]]:
    facts = json.loads((Path(__file__).parent / "splits" / "mini_imagenet.json").read_text())
    return {s: facts[s] for s in SPLITS}


def _layout(root: Path) -> str:
    if (root / STORE_INDEX).is_file():
        return "store"
    if all((root / f"mini-imagenet-cache-{s}.pkl").is_file() for s in SPLITS):
        return "pickles"
    if (root / "images").is_dir() and all((root / f"{s}.csv").is_file() for s in SPLITS):
        return "csv"
    wnids = {w for ws in standard_split().values() for w in ws}
    for base in (root, root / "train"):
        if base.is_dir() and any((base / w).is_dir() for w in wnids):
            return "folders"
    found = sorted(p.name for p in root.iterdir())[:10] if root.is_dir() else []
    raise MetalearnError(f"no miniImageNet files found in {root} (it holds: {found or 'nothing'}). {HOW_TO_GET}")


def _read_cache_pickle(root: Path, s: str) -> tuple[np.ndarray, dict]:
    """One split's cache pickle -> (image_data uint8 [N, 84, 84, 3], class_dict), checked."""
    obj = load_pickle(root / f"mini-imagenet-cache-{s}.pkl", HOW_TO_GET)
    if not (isinstance(obj, dict) and "image_data" in obj and "class_dict" in obj):
        raise MetalearnError(f"{root / f'mini-imagenet-cache-{s}.pkl'} is not a miniImageNet cache pickle (a dict "
                             f"with image_data and class_dict). {HOW_TO_GET}")
    data, classes = np.asarray(obj["image_data"]), obj["class_dict"]
    if data.ndim != 4 or data.shape[-1] != 3 or data.dtype != np.uint8:
        raise MetalearnError(f"image_data in mini-imagenet-cache-{s}.pkl is {data.dtype} {data.shape}, expected "
                             f"uint8 N x 84 x 84 x 3")
    _check_classes(s, set(classes), standard_split()[s])
    return data, classes


def _from_pickles(root: Path, size: int) -> dict:
    """Two passes over the pickles: the first counts each class's images, the second copies them into a
    store allocated once, so building holds the store plus one split's pickle and nothing else
    (experiments/memory.py measures it)."""
    split = standard_split()
    counts: dict[str, int] = {}
    for s in SPLITS:
        _, classes = _read_cache_pickle(root, s)
        counts.update({w: len(classes[w]) for w in split[s]})
    names = [w for s in SPLITS for w in split[s]]
    images = torch.empty((sum(counts.values()), size, size, 3), dtype=torch.uint8)
    i = 0
    for s in SPLITS:
        data, classes = _read_cache_pickle(root, s)
        for w in split[s]:
            rows = sorted(classes[w])
            if len(rows) != counts[w]:
                raise MetalearnError(f"mini-imagenet-cache-{s}.pkl changed while it was read; run again")
            for r in rows:
                a = data[r]
                images[i] = torch.from_numpy(a if a.shape[0] == size else resize_array(a, size, 3))
                i += 1
        del data, classes
    return {"images": nchw(images), "counts": torch.tensor([counts[w] for w in names]), "names": names}


def _from_csv(root: Path, size: int) -> dict:
    split = standard_split()
    classes = []
    for s in SPLITS:
        by_class: dict[str, list[str]] = {}
        with open(root / f"{s}.csv", newline="") as f:
            for row in csv.DictReader(f):
                by_class.setdefault(row["label"], []).append(row["filename"])
        _check_classes(s, set(by_class), split[s])
        for w in split[s]:
            paths = [root / "images" / name for name in sorted(by_class[w])]
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise MetalearnError(f"{s}.csv lists {len(missing)} images missing from {root / 'images'}, e.g. "
                                     f"{missing[0].name}. {HOW_TO_GET}")
            classes.append((w, [str(p) for p in paths]))
    return decode_classes(classes, size, 3)


def _from_folders(root: Path, size: int) -> dict:
    split = standard_split()
    classes = []
    for s in SPLITS:
        for w in split[s]:
            folder = next((b / w for b in (root, root / s) if (b / w).is_dir()), None)
            if folder is None:
                raise MetalearnError(f"class folder {w} (a {s} class of Ravi & Larochelle's split) not found in {root} "
                                     f"or {root / s}. {HOW_TO_GET}")
            classes.append((w, [str(p) for p in image_files(folder)]))
    return decode_classes(classes, size, 3)


def _check_classes(split: str, found: set[str], expected: list[str]) -> None:
    if found != set(expected):
        missing, extra = sorted(set(expected) - found), sorted(found - set(expected))
        raise MetalearnError(f"the miniImageNet {split} files do not hold Ravi & Larochelle's {split} classes: "
                             f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {extra[:3]}"
                             f"{'...' if len(extra) > 3 else ''}. {HOW_TO_GET}")


@DATASETS.register("mini_imagenet")
def build_mini_imagenet(cfg: MiniImageNetConfig) -> ImageStore:
    root = resolve_root(cfg.root, "mini_imagenet")
    layout = _layout(root)
    build = {"pickles": _from_pickles, "csv": _from_csv, "folders": _from_folders,
             "store": lambda r, size: store_classes(r, "mini_imagenet", size)}[layout]
    stamp = [[str(p), os.path.getsize(p), os.path.getmtime(p)] for p in sorted(root.iterdir()) if p.name != CHECKED]
    key = {"v": FORMAT_VERSION, "root": str(root.resolve()), "layout": layout, "size": cfg.image_size, "files": stamp}
    if layout == "store" and read_index(root)["image_size"] == cfg.image_size:
        data = build(root, cfg.image_size)  # the store is already decoded: no second copy in the cache
    else:
        data = cached(cfg.cache_dir, "mini_imagenet", key, lambda: build(root, cfg.image_size))
    names = data["names"]
    split = standard_split()
    index = {w: i for i, w in enumerate(names)}
    splits = {s: np.array([index[w] for w in split[s]], dtype=np.int64) for s in SPLITS}
    return ImageStore.from_classes(data["images"], data["counts"].numpy(), names, splits,
                                   meta={"name": "mini_imagenet", "layout": layout})
