"""Reading image files and data archives safely: one decoder for every dataset.

Everything that can go wrong with a downloaded file gets a message naming the file and the fix:
an HTML page saved in place of the data (the most-reported failure of the peer libraries), a
truncated or corrupt archive, a checksum that does not match the known source, an image that
does not decode.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from metalearn.errors import MetalearnError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:512].lower()
    return start.startswith((b"<!doctype html", b"<html", b"<?xml")) or b"<html" in start[:256]


def check_not_html(path: Path, how_to_get: str) -> None:
    """Raise if `path` is a web page (a login or error page saved under the data file's name)."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if looks_like_html(head):
        raise MetalearnError(f"{path} is an HTML page, not the data file (a download saved an error or login page "
                             f"in its place). Delete it and fetch the file again. {how_to_get}")


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_md5(path: Path, expected: str, how_to_get: str) -> None:
    check_not_html(path, how_to_get)
    got = md5sum(path)
    if got != expected:
        raise MetalearnError(f"{path} has MD5 {got}, not the {expected} of the original file: it is truncated, "
                             f"corrupt or a different version. Delete it and fetch it again. {how_to_get}")


def decode_image(data: bytes, name: str, size: int, channels: int) -> np.ndarray:
    """Image bytes -> uint8 [size, size, channels] (resized with Lanczos when needed)."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        hint = " (it is an HTML page)" if looks_like_html(data[:1024]) else ""
        raise MetalearnError(f"cannot read image {name}{hint}: {e}. Replace the file, or the archive it came "
                             f"from.") from None
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    a = np.array(img, dtype=np.uint8)  # a writable copy
    return a[:, :, None] if channels == 1 else a


def nchw(images_nhwc: torch.Tensor) -> torch.Tensor:
    """A [N, C, H, W] view of an NHWC uint8 tensor: no copy, so a big dataset is held once."""
    return images_nhwc.permute(0, 3, 1, 2)


def decode_classes(classes: list[tuple[str, list[str]]], size: int, channels: int) -> dict:
    """[(class name, [image file path, ...]), ...] -> {"images": uint8 [N, C, size, size] sorted by
    class, "counts", "names"}. Decoded one image at a time into a preallocated tensor, and the file
    lists are plain strings, so a dataset needs its uint8 size in memory and little more
    (experiments/memory.py measures it on 60,000 84x84 JPEGs)."""
    total = sum(len(files) for _, files in classes)
    images = torch.empty((total, size, size, channels), dtype=torch.uint8)
    i = 0
    for _, files in classes:
        for path in files:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise MetalearnError(f"cannot read image {path}: {e.strerror}. Check that it exists and is readable, "
                                     f"or remove it from the dataset folder.") from None
            images[i] = torch.from_numpy(decode_image(data, path, size, channels))
            i += 1
    return {"images": nchw(images), "counts": torch.tensor([len(f) for _, f in classes]),
            "names": [c for c, _ in classes]}


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class _ArrayUnpickler:
    """Unpickle data files that hold numpy arrays, lists, dicts and strings, and nothing else:
    a data file must not be able to run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict"), ("builtins", "bytearray")}

    @classmethod
    def load(cls, path: Path, how_to_get: str):
        import pickle

        class Restricted(pickle.Unpickler):
            def find_class(self, module: str, name: str):
                if (module, name) in cls.ALLOWED:
                    return super().find_class(module, name)
                raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a data file")

        check_not_html(path, how_to_get)
        try:
            with open(path, "rb") as f:
                return Restricted(f, encoding="latin1").load()
        except Exception as e:
            raise MetalearnError(f"cannot read {path} ({type(e).__name__}: {e}); it may be truncated or corrupt. "
                                 f"Delete it and fetch it again. {how_to_get}") from None


def load_pickle(path: Path, how_to_get: str):
    """A pickled data file (numpy arrays, dicts, lists), refusing anything that could run code."""
    return _ArrayUnpickler.load(path, how_to_get)


def resize_array(a: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 [H, W, C] -> [size, size, channels]."""
    if a.shape[0] == size and a.shape[1] == size and a.shape[2] == channels:
        return a
    img = Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a)
    img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.LANCZOS)
    out = np.asarray(img, dtype=np.uint8)
    return out[:, :, None] if channels == 1 else out
