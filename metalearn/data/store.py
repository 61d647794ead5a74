"""ImageStore: a whole dataset as one uint8 tensor, sorted by class, plus its class splits.

Episodes are built by indexing this tensor, so no image is decoded twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from metalearn.errors import MetalearnError

SPLITS = ("train", "val", "test")
FLOAT_COPY_MAX_BYTES = 512 * 2**20  # ImageStore.load keeps a normalised float copy of stores up to this size


@dataclass
class ImageStore:
    images: torch.Tensor  # uint8 [N, C, H, W], images of class c at class_start[c] : +class_count[c]
    class_start: np.ndarray  # int64 [num_classes]
    class_count: np.ndarray  # int64 [num_classes]
    class_names: list[str]
    splits: dict[str, np.ndarray]  # split name -> class ids
    invert: bool = False  # True when the source draws dark ink on white (stored as bright ink)
    mean: float = 0.0
    std: float = 1.0
    meta: dict = field(default_factory=dict)
    # A level above the class (Omniglot's alphabet, tieredImageNet's superclass, a folder of class folders):
    # each class's group name, and what the level is called (sampler.within names it). None: no such level.
    class_groups: list[str] | None = None
    group_by: str | None = None
    # Who drew each image (Omniglot's file names: <id>_<drawer>.png), -1 unknown; None: the dataset has no drawers.
    drawers: np.ndarray | None = None
    # Several datasets in one store (dataset=multi, metalearn.data.multi_source): each source's class ids. Episodes
    # are drawn one source at a time and results reported per source (source_view), as Meta-Dataset does.
    sources: dict[str, np.ndarray] | None = None
    # the normalised float32 copy load() keeps on the CPU for a small store (built on first use)
    _normalized: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_classes(cls, images: torch.Tensor, counts: list[int] | np.ndarray, names: list[str],
                     splits: dict[str, np.ndarray], **kw) -> ImageStore:
        counts = np.asarray(counts, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        store = cls(images, starts, counts, list(names), {k: np.asarray(v, dtype=np.int64) for k, v in splits.items()}, **kw)
        store.check()
        store.mean, store.std = store.pixel_stats("train")
        return store

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def same_images(self, other: ImageStore) -> bool:
        """Whether both stores hold the same images in the same order, so that one episode plan means the
        same task in both; they may render them differently (dataset.image_size), as an ensemble's members may."""
        return (self.class_names == other.class_names and np.array_equal(self.class_count, other.class_count)
                and self.splits.keys() == other.splits.keys()
                and all(np.array_equal(self.splits[k], other.splits[k]) for k in self.splits)
                and (self.drawers is None) == (other.drawers is None)
                and (self.drawers is None or np.array_equal(self.drawers, other.drawers)))

    def check(self) -> None:
        """Splits must be disjoint and in range: no class may leak between them."""
        seen: set[int] = set()
        for name, ids in self.splits.items():
            s = set(ids.tolist())
            if seen & s:
                raise ValueError(f"class split '{name}' shares classes with another split")
            seen |= s
            if ids.size and (ids.min() < 0 or ids.max() >= self.num_classes):
                raise ValueError(f"class split '{name}' has class ids outside 0..{self.num_classes - 1}")
        if int(self.class_count.sum()) != self.images.shape[0]:
            raise ValueError("class counts do not add up to the number of images")
        if self.class_groups is not None and (len(self.class_groups) != self.num_classes or not self.group_by):
            raise ValueError("class_groups needs one group per class and group_by naming the level")
        if self.drawers is not None and len(self.drawers) != self.images.shape[0]:
            raise ValueError("drawers needs one entry per image")
        if self.sources is not None:
            owned = np.sort(np.concatenate(list(self.sources.values())))
            if not np.array_equal(owned, np.arange(self.num_classes)):
                raise ValueError("sources must own every class exactly once")

    def pixel_stats(self, split: str, max_images: int = 20_000) -> tuple[float, float]:
        """Mean and std of the split's pixels (from up to `max_images` images spread over it, in chunks
        of about 256K pixels: a float copy of a whole 84x84 RGB dataset would need 8x its uint8
        size, and even 1,000 such images at a time cost 340 MB; experiments/memory.py measures it)."""
        ids = self.splits.get(split)
        if ids is None or ids.size == 0:
            ids = np.arange(self.num_classes)
        index = np.concatenate([self.class_start[c] + np.arange(self.class_count[c]) for c in ids])
        if len(index) > max_images:
            index = index[np.linspace(0, len(index) - 1, max_images).astype(np.int64)]
        total = total_sq = 0.0
        count = 0
        chunk = max(1, 2**18 // int(np.prod(self.images.shape[1:])))  # ~256K pixels: 2 MB as float64
        for start in range(0, len(index), chunk):
            x = self.images[torch.from_numpy(index[start:start + chunk])].double().div_(255.0).reshape(-1)
            total, total_sq, count = total + float(x.sum()), total_sq + float(x @ x), count + x.numel()
        mean = total / count
        return mean, max(float(np.sqrt(max(total_sq / count - mean * mean, 0.0))), 1e-6)

    def take(self, index: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 images at these store indices (any shape, flattened). index_select, not x[index]:
        for an episode's 80 glyphs it costs 11 µs instead of 230 µs (measured, 2 threads)."""
        index = torch.from_numpy(np.ascontiguousarray(index)) if isinstance(index, np.ndarray) else index
        return self.images.index_select(0, index.reshape(-1))

    def load(self, index: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """Normalised float32 images at these store indices (flattened), on `device`: what episodes,
        training batches and evaluation read.

        On the CPU, a store whose float copy fits in FLOAT_COPY_MAX_BYTES (Omniglot's small archives:
        75 MB) keeps that copy, so a batch is one index_select instead of index, convert and scale
        (bitwise the same values: the same elementwise arithmetic, done once per image). Larger
        stores, and GPUs, index the uint8 store, move 4x fewer bytes, and normalise on arrival."""
        if str(device) == "cpu" and self.images.numel() * 4 <= FLOAT_COPY_MAX_BYTES:
            self._float_copy()
            index = torch.from_numpy(np.ascontiguousarray(index)) if isinstance(index, np.ndarray) else index
            return self._normalized.index_select(0, index.reshape(-1))
        x = self.take(index)
        if str(device) != "cpu":
            x = x.to(device, non_blocking=True)
        return self.normalize(x)

    def _float_copy(self) -> torch.Tensor | None:
        """The normalised float copy load() keeps for a small store (None for a larger one), built on first use."""
        if self._normalized is None and self.images.numel() * 4 <= FLOAT_COPY_MAX_BYTES:
            self._normalized = self.normalize(self.images)
        return self._normalized

    def source_names(self) -> list[str]:
        """The sources of a multi-source store, in order; [] for one dataset."""
        return list(self.sources or {})

    def source_view(self, name: str) -> ImageStore:
        """One source of a multi-source store: the same images, indices and normalisation (so an episode plan means
        the same images in both), its splits cut to the source's classes. No copy: the float copy is shared."""
        if not self.sources or name not in self.sources:
            raise MetalearnError(f"source {name!r} is not one of this dataset's sources: "
                                 f"{', '.join(self.source_names()) or 'it has one dataset'}")
        own = self.sources[name]
        return replace(self, splits={k: v[np.isin(v, own)] for k, v in self.splits.items()},
                       meta={**self.meta, "name": name, "source_of": self.meta.get("name")}, sources=None,
                       _normalized=self._float_copy())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float, scaled to [0, 1] then standardised with the train split's stats
        (one copy and two in-place ops: a quarter of the time of the three-op expression)."""
        return x.to(torch.float32, copy=True).mul_(1.0 / (255.0 * self.std)).add_(-self.mean / self.std)

    def describe(self) -> str:
        parts = ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
        shape = tuple(self.images.shape[1:])
        return f"{self.meta.get('name', 'dataset')}: {self.images.shape[0]} images {shape}, classes {parts}"


def split_by_fractions(n: int, fractions: list[float], seed: int) -> dict[str, np.ndarray]:
    """Shuffle 0..n-1 with `seed` and cut it into train/val/test by `fractions`."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise MetalearnError(f"dataset.split_fractions must be three non-negative numbers (train, val, test) with a "
                             f"positive sum, got {fractions}; e.g. dataset.split_fractions=[0.7,0.1,0.2]")
    total = float(sum(fractions))
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(n * fractions[0] / total))
    n_val = int(round(n * fractions[1] / total))
    return {"train": np.sort(order[:n_train]), "val": np.sort(order[n_train:n_train + n_val]),
            "test": np.sort(order[n_train + n_val:])}
