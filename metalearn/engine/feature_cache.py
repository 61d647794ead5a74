"""Codes of a frozen encoder, computed once per split and kept on disk (metalearn-eval feature_cache=true).

An evaluation of an embedding method whose code of an image does not depend on the task (batch norms on running
statistics, no test-time copies) needs each image's code, not the image: after the first evaluation of a split,
every later one (other episodes, other readouts, a search over a readout's options) reads the codes instead of
running the encoder. The codes of every image of the split are stored in an .npy file that is memory-mapped on
reading, under <cache>/features/<key>.npy, the key a SHA-256 of the method's weights, the split's
images (their bytes), its classes, the preprocessing and the dtype; a sidecar .json says what it holds. A changed
weight, image or normalisation is another key, never a stale read.

The codes are kept as float32 by default, so a cached evaluation gives the per-episode results of an uncached one
(tests/test_feature_cache.py); feature_cache_dtype=float16 halves the file and the reads, at the price of
rounding each code to 11 significant bits (docs/performance.md counts the predictions that changes).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metalearn.data.store import ImageStore
from metalearn.errors import MetalearnError
from metalearn.files import atomic_open, write_text
from metalearn.methods.base import EmbeddingMethod, fp32
from metalearn.support_index import weights_digest

log = logging.getLogger("metalearn")


def cache_root(dataset: Any) -> Path:
    """Where a run's feature caches live: its dataset's cache_dir (the image store's), under features/."""
    return Path(str((dataset or {}).get("cache_dir") or "~/.cache/metalearn")).expanduser()


def encoder_rows(method: torch.nn.Module, store: ImageStore, device: torch.device | str
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """Store indices -> the method's float32 codes of those images, in eval mode without autograd: what a cache is
    filled with."""

    def encode_rows(index: np.ndarray) -> np.ndarray:
        was = method.training
        method.eval()
        try:
            with torch.no_grad():
                return fp32(method.encode(store.load(index, device))).cpu().numpy()
        finally:
            method.train(was)

    return encode_rows


def split_digest(store: ImageStore, split: str) -> str:
    """The split's classes (names, counts) and image bytes, and the store's normalisation."""
    h = hashlib.sha256()
    ids = store.splits[split]
    for c in ids.tolist():
        h.update(store.class_names[c].encode() + b"\0")
        start, n = int(store.class_start[c]), int(store.class_count[c])
        h.update(np.int64(n).tobytes())
        h.update(store.images[start:start + n].numpy().tobytes())
    h.update(json.dumps([store.mean, store.std, store.invert, list(store.image_shape)]).encode())
    return h.hexdigest()


class FeatureCache:
    """The codes of every image of `store`'s `split` under `method`, read from disk or encoded (and saved) once."""

    def __init__(self, root: Path, method: torch.nn.Module, store: ImageStore, split: str, dtype: str = "float32",
                 digest: str | None = None):
        """`digest`: what fixes the codes, where that is less than all of the method's weights (a training run's
        frozen encoder, whose head learns: FrozenCodes)."""
        self.method, self.store, self.split, self.dtype = method, store, split, np.dtype(dtype)
        digest = digest or weights_digest(method)
        key = hashlib.sha256(f"{digest}|{split_digest(store, split)}|{split}|{dtype}".encode()).hexdigest()[:24]
        self.path = Path(root).expanduser() / "features" / f"{key}.npy"
        ids = store.splits[split]
        self.index = np.concatenate([store.class_start[c] + np.arange(store.class_count[c]) for c in ids]) \
            if len(ids) else np.zeros(0, dtype=np.int64)
        self.row = np.full(store.images.shape[0], -1, dtype=np.int64)  # store index -> row of the cache
        self.row[self.index] = np.arange(len(self.index))
        self.hit = self.path.is_file()
        self._codes: np.ndarray | None = None  # the memory map, once opened

    def codes(self, encode_rows) -> np.ndarray:
        """The [images of the split, ...] codes, memory-mapped; `encode_rows(index)` -> float32 codes of those
        store indices, called (in chunks) only when the file is not there yet."""
        if self._codes is not None:
            return self._codes
        if not self.path.is_file():
            chunk = max(16, 2**21 // int(np.prod(self.store.images.shape[1:])))
            parts = [encode_rows(self.index[i:i + chunk]).astype(self.dtype) for i in range(0, len(self.index), chunk)]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(self.path) as f:
                np.save(f, np.concatenate(parts))
            write_text(self.path.with_suffix(".json"), json.dumps({
                "dataset": self.store.meta.get("name"), "split": self.split, "images": int(len(self.index)),
                "method": getattr(self.method, "name", type(self.method).__name__), "dtype": str(self.dtype)}, indent=1))
        self._codes = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return self._codes

    def lookup(self, ids: np.ndarray, encode_rows, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """As encode_distinct: the codes of the distinct images among `ids` (float32, on `device`) and `ids` as rows
        of them."""
        rows = self.row[np.asarray(ids)]
        if (rows < 0).any():
            raise ValueError("an image outside the cached split was asked for")
        distinct, inverse = np.unique(rows, return_inverse=True)
        codes = torch.from_numpy(np.asarray(self.codes(encode_rows)[distinct], dtype=np.float32)).to(device)
        return codes, torch.from_numpy(inverse.reshape(np.shape(ids))).to(device)


class FrozenCodes:
    """metalearn-train feature_cache=true: a run whose encoder training cannot change (a frozen timm encoder under a
    Meta-Baseline, ProtoNet, FEAT or linear head; SimpleShot's base mean) reads its codes from a feature cache per
    split: the training steps by the images' store indices, validation and the test through evaluate's cache. Each
    split is encoded once, on first use (after init.run has loaded the encoder whose weights key it), float32, so
    every step and score is the uncached one (tests/test_feature_cache.py). Augmented steps are new pixels and are
    refused rather than silently encoded."""

    def __init__(self, method: EmbeddingMethod, root: Path, precision: str, device: torch.device):
        self.method, self.root, self.precision, self.device = method, root, precision, device
        self.held: dict[tuple[str | None, str], FeatureCache] = {}

    def cache(self, store: ImageStore, split: str, source: str | None = None) -> FeatureCache:
        """The split's cache (of one `source`'s view of a multi-source store), keyed by the encoder's weights, the
        method's kind (its encode: codes or feature maps) and the precision."""
        if (source, split) not in self.held:
            digest = f"{type(self.method).__name__}|{weights_digest(self.method.backbone)}|{self.precision}"
            cache = FeatureCache(self.root, self.method, store, split, digest=digest)
            log.info("feature cache: %s the %s split's codes%s %s", "reading" if cache.hit else "encoding", split,
                     f" of {source}" if source else "", cache.path)
            self.held[(source, split)] = cache
        return self.held[(source, split)]

    def codes_of(self, store: ImageStore) -> Callable[[np.ndarray], torch.Tensor]:
        """Store indices of the run's training images (any shape) -> their codes [..., D], float32 on the CPU."""
        encode_rows = encoder_rows(self.method, store, self.device)

        def codes_of(index: np.ndarray) -> torch.Tensor:
            cache = self.cache(store, "train")
            return torch.from_numpy(np.asarray(cache.codes(encode_rows)[cache.row[np.asarray(index)]], dtype=np.float32))

        return codes_of


def frozen_codes(method: torch.nn.Module, root: Path, precision: str, device: torch.device, augment: bool) -> FrozenCodes:
    """A run's FrozenCodes, or a MetalearnError naming why this run's codes are not fixed and the fix."""
    if not isinstance(method, EmbeddingMethod):
        why = f"{method.name} adapts its weights to each task, so an image has no code of its own"
    elif augment:
        why = "augment.enabled gives every training step new pixels"
    else:
        was = method.training
        method.train()
        why = method.frozen_codes_reason()
        method.train(was)
    if why:
        raise MetalearnError(f"feature_cache=true reads the codes of a frozen encoder, and {why}; drop "
                             f"feature_cache=true")
    return FrozenCodes(method, root, precision, device)
