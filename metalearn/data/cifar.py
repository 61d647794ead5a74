"""CIFAR-FS (Bertinetto et al. 2019) and FC100 (Oreshkin et al. 2018), both made of CIFAR-100.

Reads CIFAR-100's python release under dataset.root: the extracted ``cifar-100-python/`` folder
(``train``, ``test``, ``meta`` pickles) or the archive ``cifar-100-python.tar.gz`` (MD5-checked
against the original, then extracted), or downloads it (metalearn-data get cifar_fs, or
``download=true``). Both official halves are merged (600 images per class), then split by class:

- ``cifar_fs``: 64 / 16 / 20 fine classes;
- ``fc100``: by superclass, 12 / 4 / 4 superclasses of 5 classes (60 / 20 / 20 classes), so no
  superclass is shared between splits.

The lists are facts in splits/cifar.json.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import torch

from metalearn.config import CifarConfig
from metalearn.data.cache import cached
from metalearn.data.catalog import file_spec, resolve_root
from metalearn.data.decode import check_md5, load_pickle, nchw, resize_array
from metalearn.data.store import SPLITS, ImageStore
from metalearn.errors import MetalearnError
from metalearn.registry import DATASETS

FORMAT_VERSION = 1
HOW_TO_GET = ("Run `metalearn-data get cifar_fs` (it puts cifar-100-python.tar.gz where dataset.root defaults to), "
              "or put CIFAR-100's python version in dataset.root: cifar-100-python.tar.gz from "
              "https://www.cs.toronto.edu/~kriz/cifar.html, or the cifar-100-python/ folder it extracts to; or set "
              "dataset.download=true.")


def facts() -> dict:
    return json.loads((Path(__file__).parent / "splits" / "cifar.json").read_text())


def _folder(root: Path, download: bool) -> Path:
    folder = root / "cifar-100-python"
    if download and not folder.is_dir() and not (root / facts()["archive"]["file"]).is_file():
        from metalearn.data.fetch import fetch

        fetch(file_spec(facts()["archive"]["file"]), root)
    if not folder.is_dir():
        archive = root / facts()["archive"]["file"]
        if not archive.is_file():
            raise MetalearnError(f"CIFAR-100 not found in {root} (looked for cifar-100-python/ and "
                                 f"cifar-100-python.tar.gz). {HOW_TO_GET}")
        check_md5(archive, facts()["archive"]["md5"], HOW_TO_GET)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(root, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise MetalearnError(f"cannot extract {archive}: {e}. Delete it and fetch it again. {HOW_TO_GET}") from None
    missing = [n for n in ("train", "test", "meta") if not (folder / n).is_file()]
    if missing:
        raise MetalearnError(f"{folder} lacks {', '.join(missing)}; the extraction is incomplete. {HOW_TO_GET}")
    return folder


def _read(folder: Path, size: int) -> dict:
    """All 60,000 images sorted by fine class (train half first), with fine and coarse class names."""
    meta = load_pickle(folder / "meta", HOW_TO_GET)
    images, fine, coarse_of = [], [], {}
    for part in ("train", "test"):
        d = load_pickle(folder / part, HOW_TO_GET)
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        images.append(x)
        fine.append(np.asarray(d["fine_labels"]))
        coarse_of.update(zip(d["fine_labels"], d["coarse_labels"], strict=True))
    x, y = np.concatenate(images), np.concatenate(fine)
    order = np.argsort(y, kind="stable")
    x, y = x[order], y[order]
    if size != 32:
        x = np.stack([resize_array(a, size, 3) for a in x])
    names = [n.decode() if isinstance(n, bytes) else n for n in meta["fine_label_names"]]
    coarse = [n.decode() if isinstance(n, bytes) else n for n in meta["coarse_label_names"]]
    return {"images": nchw(torch.from_numpy(np.ascontiguousarray(x))), "counts": torch.from_numpy(np.bincount(y, minlength=100)),
            "names": names, "superclass": torch.tensor([coarse_of[i] for i in range(len(names))]),
            "superclass_names": coarse}


@DATASETS.register("cifar_fs", "fc100")
def build_cifar(cfg: CifarConfig) -> ImageStore:
    if cfg.name not in ("cifar_fs", "fc100"):
        raise MetalearnError(f"dataset.name={cfg.name!r} is not one of: cifar_fs, fc100")
    root = resolve_root(cfg.root, cfg.name)
    folder = _folder(root, cfg.download)
    key = {"v": FORMAT_VERSION, "folder": str(folder.resolve()), "size": cfg.image_size,
           "files": [[n, os.path.getsize(folder / n), os.path.getmtime(folder / n)] for n in ("train", "test", "meta")]}
    data = cached(cfg.cache_dir, "cifar100", key, lambda: _read(folder, cfg.image_size))
    names = data["names"]
    f = facts()
    if cfg.name == "cifar_fs":
        index = {n: i for i, n in enumerate(names)}
        val, test = [index[n] for n in f["cifar_fs"]["val"]], [index[n] for n in f["cifar_fs"]["test"]]
        train = [i for i in range(len(names)) if i not in set(val) | set(test)]
        splits = {"train": train, "val": val, "test": test}
    else:
        sup = data["superclass"].numpy()
        splits = {s: np.flatnonzero(np.isin(sup, f["fc100"][s])) for s in SPLITS}
    return ImageStore.from_classes(data["images"], data["counts"].numpy(), names,
                                   {s: np.sort(np.asarray(v, dtype=np.int64)) for s, v in splits.items()},
                                   meta={"name": cfg.name})
