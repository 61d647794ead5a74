"""What a method meta-trains on, step by step.

Most methods learn from episodes. Two learn from something else, drawn from the same
training classes and just as reproducibly:

- ``pairs`` (Siamese networks): balanced same/different image pairs, a verification task;
- ``labelled`` (the transfer baselines): ordinary minibatches of images with their class
  among all training classes, for supervised pre-training.

Every source draws step s from a generator seeded by (seed, s) alone, as the episode sampler
does, so a resumed run sees the same data as an uninterrupted one. Each draws plans (image
indices) first and pixels second, from the training split only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from metalearn.data.store import ImageStore
from metalearn.errors import MetalearnError
from metalearn.tasks.episodes import EpisodeBatch, EpisodeSampler, TaskSpec, gather
from metalearn.tasks.multi_source import MixedEpisodeSampler, MixedVariableSampler
from metalearn.tasks.variable import VariableSampler, gather_one

ImageMap = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class PairBatch:
    """Image pairs (first[i], second[i]) and whether they show the same class (float 0/1)."""

    first: torch.Tensor
    second: torch.Tensor
    same: torch.Tensor

    def map_images(self, fn: ImageMap) -> PairBatch:
        return PairBatch(fn(self.first), fn(self.second), self.same)


@dataclass
class LabelledBatch:
    """Images and their class as an index into the training split's classes (0..num_classes-1)."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    index: np.ndarray | None = None  # the images' store indices (a frozen encoder's cached codes are looked up by them)

    def map_images(self, fn: ImageMap) -> LabelledBatch:
        return LabelledBatch(fn(self.images), self.labels, self.num_classes)  # new pixels: no longer the stored images


def _store_images(store: ImageStore, index: np.ndarray, device: torch.device | str) -> torch.Tensor:
    x = store.load(index, device)
    return x.reshape(*index.shape, *x.shape[1:])


class EpisodeSource:
    """Meta-batches of episodes: step s holds episodes s*meta_batch .. (s+1)*meta_batch-1 (from one source each, for a
    multi-source store)."""

    unit = "episodes"

    def __init__(self, store: ImageStore, spec: TaskSpec, seed: int, meta_batch: int):
        self.store, self.meta_batch = store, meta_batch
        self.sampler = (MixedEpisodeSampler(store, "train", spec, seed) if store.sources
                        else EpisodeSampler(store, "train", spec, seed))
        self.per_step = meta_batch

    def batch(self, step: int, device: torch.device | str) -> EpisodeBatch:
        return gather(self.store, self.sampler.plans(step * self.meta_batch, self.meta_batch), device)


class VariableEpisodeSource:
    """Meta-Dataset's variable episodes from the training split, one a step (step s is episode s): their shapes
    differ, so a meta-batch of several is not one tensor."""

    unit = "episodes"
    per_step = 1

    def __init__(self, store: ImageStore, seed: int):
        self.store = store
        self.sampler = MixedVariableSampler(store, "train", seed) if store.sources else VariableSampler(store, "train", seed)

    def batch(self, step: int, device: torch.device | str) -> EpisodeBatch:
        return gather_one(self.store, self.sampler.episode(step), device)


class PairSource:
    """Balanced verification pairs from the training split: the first half of each batch shows
    two different images of one class, the second half images of two different classes.

    ``hard_negatives`` is the fraction of different-class pairs whose two classes share a group, the
    part of the class name before its first "/" (Omniglot's alphabet; a rotated or mirrored copy of a
    character stays in its alphabet). Why: two random Omniglot characters mostly differ at a glance,
    while the one-shot test compares characters of one alphabet."""

    unit = "pairs"

    def __init__(self, store: ImageStore, seed: int, pairs: int, split: str = "train", hard_negatives: float = 0.0):
        if pairs < 2 or pairs % 2:
            raise MetalearnError(f"method.pairs must be an even number >= 2 (half same, half different), got {pairs}")
        self.classes = store.splits[split]
        if len(self.classes) < 2:
            raise MetalearnError(f"Siamese training needs at least 2 {split} classes, the dataset has {len(self.classes)}")
        self.counts, self.starts = store.class_count[self.classes], store.class_start[self.classes]
        if int(self.counts.min()) < 2:
            raise MetalearnError(f"Siamese training needs 2 images per {split} class for same-class pairs; some "
                                 f"classes have {int(self.counts.min())}")
        self.store, self.seed, self.per_step, self.hard = store, seed, pairs, hard_negatives
        if not 0.0 <= hard_negatives <= 1.0:
            raise MetalearnError(f"method.hard_negatives is a fraction of the different-class pairs, in [0, 1]; "
                                 f"got {hard_negatives}")
        if hard_negatives > 0:
            self._index_groups([store.class_names[c] for c in self.classes], split)

    def _index_groups(self, names: list[str], split: str) -> None:
        """Classes sorted by group: class i's group-mates are order[start[i] : start[i] + size[i]]."""
        group = np.array([n.split("/", 1)[0] if "/" in n else n for n in names])
        self.order = np.argsort(group, kind="stable")
        _, first, sizes = np.unique(group[self.order], return_index=True, return_counts=True)
        _, inverse = np.unique(group, return_inverse=True)
        self.group_start, self.group_size = first[inverse], sizes[inverse]
        self.position = np.empty(len(names), dtype=np.int64)  # where class i sits in self.order
        self.position[self.order] = np.arange(len(names))
        if int(self.group_size.max()) < 2:
            raise MetalearnError(f"method.hard_negatives needs classes that share a group (the name before '/', e.g. "
                                 f"Omniglot's alphabet); no two {split} classes do. Set method.hard_negatives=0.")

    def _group_mates(self, a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each class a, another class of its group, uniformly (a itself where it has no group-mate)."""
        size = self.group_size[a]
        r = (rng.random(len(a)) * np.maximum(size - 1, 1)).astype(np.int64)
        r = r + (r >= self.position[a] - self.group_start[a])
        return np.where(size > 1, self.order[self.group_start[a] + np.minimum(r, size - 1)], a)

    def plans(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image indices [pairs, 2], each image's class id [pairs, 2], and same-class flags [pairs]."""
        rng = np.random.default_rng([self.seed, step])
        half = self.per_step // 2
        n = len(self.classes)
        same = rng.integers(n, size=half)
        a, b = rng.integers(n, size=half), rng.integers(n - 1, size=half)
        b = b + (b >= a)  # a different class, uniformly
        if self.hard > 0:  # extra draws only here, so hard_negatives=0 gives the pairs it always gave
            hard = rng.random(half) < self.hard
            mate = self._group_mates(a, rng)
            b = np.where(hard & (mate != a), mate, b)
        cls = np.concatenate([np.stack([same, same], 1), np.stack([a, b], 1)])
        offset = np.empty_like(cls)
        first = (rng.random(self.per_step) * self.counts[cls[:, 0]]).astype(np.int64)
        offset[:, 0] = first
        # same class: a different image of it; different classes: any image
        second = (rng.random(self.per_step) * (self.counts[cls[:, 1]] - 1)).astype(np.int64)
        offset[:, 1] = np.where(np.arange(self.per_step) < half, second + (second >= first), second)
        return self.starts[cls] + offset, self.classes[cls], (np.arange(self.per_step) < half).astype(np.float32)

    def batch(self, step: int, device: torch.device | str) -> PairBatch:
        index, _, same = self.plans(step)
        x = _store_images(self.store, index, device)
        return PairBatch(x[:, 0], x[:, 1], torch.from_numpy(same).to(device))


class LabelledSource:
    """Minibatches of training images (distinct within a batch, uniform over images) labelled
    with their class's position in the training split."""

    unit = "images"

    def __init__(self, store: ImageStore, seed: int, batch_size: int, split: str = "train"):
        classes = store.splits[split]
        counts = store.class_count[classes]
        if batch_size < 1:
            raise MetalearnError(f"method.batch_size must be >= 1, got {batch_size}")
        self.index = np.concatenate([store.class_start[c] + np.arange(n) for c, n in zip(classes, counts, strict=True)])
        self.labels = np.repeat(np.arange(len(classes)), counts)
        if batch_size > len(self.index):
            raise MetalearnError(f"method.batch_size={batch_size} but the {split} split has only {len(self.index)} images")
        self.store, self.seed, self.per_step, self.num_classes = store, seed, batch_size, len(classes)

    def plans(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        pick = np.random.default_rng([self.seed, step]).choice(len(self.index), self.per_step, replace=False)
        return self.index[pick], self.labels[pick]

    def batch(self, step: int, device: torch.device | str) -> LabelledBatch:
        index, labels = self.plans(step)
        return LabelledBatch(_store_images(self.store, index, device), torch.from_numpy(labels).to(device),
                             self.num_classes, index)


TrainingSource = EpisodeSource | VariableEpisodeSource | PairSource | LabelledSource
