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
    a = np.asarray(img, dtype=np.uint8)
    return a[:, :, None] if channels == 1 else a


def nchw(images_nhwc: torch.Tensor) -> torch.Tensor:
    """A [N, C, H, W] view of an NHWC uint8 tensor: no copy, so a big dataset is held once."""
    return images_nhwc.permute(0, 3, 1, 2)
