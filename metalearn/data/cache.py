"""Decoded datasets are cached on disk, keyed by what produced them."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from metalearn.files import atomic_open


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save, whole or not at all (metalearn.files.atomic_open)."""
    with atomic_open(path) as f:
        torch.save(obj, f)


def cached(cache_dir: str, kind: str, key: dict, build: Callable[[], dict]) -> dict:
    """Return build()'s result, loading it from cache_dir when the same key was built before."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir).expanduser() / f"{kind}-{digest}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True, mmap=True)  # pages in what episodes touch
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            path.unlink(missing_ok=True)
    value = build()
    with contextlib.suppress(OSError):  # a read-only cache folder only costs speed
        atomic_torch_save(value, path)
    return value
