"""CUB-200-2011 (Wah et al. 2011): 200 bird species, 11,788 photos, the standard cross-domain target
(miniImageNet -> CUB, Chen et al. 2019; BSCD-FSL).

Reads the official archive CUB_200_2011.tgz under dataset.root (SHA-256-checked, then extracted beside it)
or its extracted CUB_200_2011/images/<NNN.Species>/*.jpg; `dataset.download=true` or `metalearn-data get cub`
fetches it. The split is Chen et al.'s (CloserLookFewShot, filelists/CUB/write_CUB_filelist.py): the class
folders sorted by name, the i-th (from 0) in train when i % 2 == 0, val when i % 4 == 1, test when
i % 4 == 3: 100 / 50 / 50 classes.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from metalearn.config import CubConfig
from metalearn.data.cache import cached
from metalearn.data.catalog import file_spec, resolve_root
from metalearn.data.decode import check_not_html, decode_classes, image_files
from metalearn.data.store import ImageStore
from metalearn.errors import MetalearnError
from metalearn.registry import DATASETS

FORMAT_VERSION = 1
ARCHIVE = "CUB_200_2011.tgz"
HOW_TO_GET = (f"Run `metalearn-data get cub` (or set dataset.download=true), or put {ARCHIVE} from "
              f"https://data.caltech.edu/records/65de6-vp158 in dataset.root.")


def chen_split(n: int) -> dict[str, list[int]]:
    """Chen et al. 2019's CUB split of n sorted class folders (100 / 50 / 50 of 200)."""
    return {"train": [i for i in range(n) if i % 2 == 0], "val": [i for i in range(n) if i % 4 == 1],
            "test": [i for i in range(n) if i % 4 == 3]}


def _images_folder(root: Path, download: bool, check: bool) -> Path:
    for cand in (root / "CUB_200_2011" / "images", root / "images"):
        if cand.is_dir():
            return cand
    archive = root / ARCHIVE
    if not archive.is_file() and download:
        from metalearn.data.fetch import fetch

        fetch(file_spec(ARCHIVE), root)
    if not archive.is_file():
        raise MetalearnError(f"CUB-200-2011 not found in {root} (looked for CUB_200_2011/images/ and {ARCHIVE}). "
                             f"{HOW_TO_GET}")
    check_not_html(archive, HOW_TO_GET)
    if check:
        from metalearn.data.fetch import sha256sum

        spec = file_spec(ARCHIVE)
        if sha256sum(archive) != spec.sha256:
            raise MetalearnError(f"{archive} is not the official {ARCHIVE} (its SHA-256 differs from {spec.sha256}): "
                                 f"truncated or another version. Delete it and fetch it again; an archive you re-packed "
                                 f"yourself: dataset.check_sha256=false. {HOW_TO_GET}")
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise MetalearnError(f"cannot extract {archive}: {e}. Delete it and fetch it again. {HOW_TO_GET}") from None
    folder = root / "CUB_200_2011" / "images"
    if not folder.is_dir():
        raise MetalearnError(f"{archive} holds no CUB_200_2011/images/ folder; it is not CUB-200-2011. {HOW_TO_GET}")
    return folder


@DATASETS.register("cub")
def build_cub(cfg: CubConfig) -> ImageStore:
    root = resolve_root(cfg.root, "cub")
    folder = _images_folder(root, cfg.download, cfg.check_sha256)
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and image_files(p))
    if len(classes) < 4:
        raise MetalearnError(f"{folder} has {len(classes)} class folders with images; CUB-200-2011 has 200. {HOW_TO_GET}")
    files = [(c.name, [str(p) for p in image_files(c)]) for c in classes]
    key = {"v": FORMAT_VERSION, "folder": str(folder.resolve()), "size": cfg.image_size,
           "files": [[n, len(fs), max(os.path.getmtime(f) for f in fs)] for n, fs in files]}
    data = cached(cfg.cache_dir, "cub", key, lambda: decode_classes(files, cfg.image_size, 3))
    import numpy as np

    splits = {s: np.asarray(ids, dtype=np.int64) for s, ids in chen_split(len(classes)).items()}
    return ImageStore.from_classes(data["images"], data["counts"].numpy(), data["names"], splits,
                                   meta={"name": "cub", "classes": len(classes)})
