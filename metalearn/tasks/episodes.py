"""Episodes: plans first (which images form each task), pixels later.

A plan is drawn from a generator seeded by (seed, episode index), so episode i
is the same whatever batch it is drawn in, a resumed run sees the same
episodes as an uninterrupted one, and an evaluation set is a fixed list that
every method and run sees identically.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from metalearn.data.store import ImageStore
from metalearn.errors import MetalearnError


@dataclass(frozen=True)
class TaskSpec:
    ways: int
    shots: int
    queries: int

    def __post_init__(self) -> None:
        for key in ("ways", "shots", "queries"):
            value = getattr(self, key)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise MetalearnError(f"{key} must be a positive whole number, got {value!r} (e.g. {key}=5)")
        if self.ways < 2:
            raise MetalearnError(f"ways must be at least 2 for a classification task, got {self.ways}")

    @property
    def tag(self) -> str:
        return f"{self.ways}w{self.shots}s"


@dataclass
class EpisodePlans:
    """Image indices of T tasks: classes [T, ways], support [T, ways, shots], query [T, ways, queries]."""

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray

    def __len__(self) -> int:
        return self.classes.shape[0]

    def digest(self) -> str:
        """A fingerprint: two evaluations are comparable episode by episode iff their digests match."""
        h = hashlib.sha256()
        for a in (self.classes, self.support, self.query):
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def slice(self, start: int, stop: int) -> EpisodePlans:
        return EpisodePlans(self.classes[start:stop], self.support[start:stop], self.query[start:stop])

    def to_dict(self) -> dict[str, np.ndarray]:
        return {"classes": self.classes, "support": self.support, "query": self.query}

    def image_ids(self) -> np.ndarray:
        """[T, ways*shots + ways*queries] store indices: each task's support images, then its queries,
        grouped by class (the order of EpisodeBatch)."""
        t = len(self)
        return np.concatenate([self.support.reshape(t, -1), self.query.reshape(t, -1)], 1)


@dataclass
class EpisodeBatch:
    """Pixels of T tasks: support [T, ways*shots, C, H, W], query [T, ways*queries, C, H, W].

    Labels are 0..ways-1 in the order of `classes`; examples are grouped by label.
    """

    support: torch.Tensor
    support_labels: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor
    ways: int

    @property
    def tasks(self) -> int:
        return self.support.shape[0]

    def chunks(self, size: int) -> list[EpisodeBatch]:
        """The meta-batch as consecutive groups of at most `size` tasks (views, no copy)."""
        return [EpisodeBatch(self.support[i:i + size], self.support_labels[i:i + size], self.query[i:i + size],
                             self.query_labels[i:i + size], self.ways) for i in range(0, self.tasks, size)]

    def map_images(self, fn) -> EpisodeBatch:
        """The same episodes with `fn` applied to the support images, then to the query images."""
        return EpisodeBatch(fn(self.support), self.support_labels, fn(self.query), self.query_labels, self.ways)


@functools.lru_cache(maxsize=64)
def episode_labels(tasks: int, ways: int, per_class: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[tasks, ways*per_class] labels 0..ways-1, grouped by class as the images of a plan are.
    Cached: the same few shapes recur every step (an expanded view, so never written in place)."""
    return torch.arange(ways, device=device).repeat_interleave(per_class).expand(tasks, -1)


SKIP_HINT = {"val": " or skip validation with val.every=0", "test": " or skip the test with test.episodes=0"}


class EpisodeSampler:
    """Draws N-way K-shot Q-query plans from one split of a store."""

    def __init__(self, store: ImageStore, split: str, spec: TaskSpec, seed: int):
        if split not in store.splits:
            raise MetalearnError(f"split {split!r} does not exist; the dataset has: {', '.join(store.splits)}")
        self.classes = store.splits[split]
        self.counts = store.class_count[self.classes]
        self.starts = store.class_start[self.classes]
        self.spec, self.seed, self.split = spec, seed, split
        n = len(self.classes)
        self.uniform = bool(n) and int(self.counts.min()) == int(self.counts.max())  # Omniglot: 20 per class
        self.columns = np.arange(int(self.counts.max()) if n else 0)[None, :]
        name = store.meta.get("name", "the dataset")
        if spec.ways > n:
            fix = (f"use ways<={n} (or sampler.train_ways for training), or " if n >= 2 else "")
            raise MetalearnError(f"ways={spec.ways} but the {split} split of {name} has only {n} class"
                                 f"{'' if n == 1 else 'es'}; {fix}give the {split} split more classes (the dataset's "
                                 f"split_fractions, alphabets or split_file){SKIP_HINT.get(split, '')}.")
        need = spec.shots + spec.queries
        if n and need > int(self.counts.min()):
            low = int(self.counts.min())
            few = [store.class_names[c] for c in self.classes[self.counts == low][:3]]
            fix = (f"lower shots or queries so that shots+queries<={low}, or " if low >= 2 else "")
            raise MetalearnError(f"shots+queries={spec.shots}+{spec.queries}={need} but {split} class "
                                 f"{', '.join(few)} {'has' if len(few) == 1 else 'have'} only {low} image"
                                 f"{'' if low == 1 else 's'}; {fix}add images to {'it' if len(few) == 1 else 'them'} "
                                 f"or remove {'it' if len(few) == 1 else 'them'} from the dataset.")

    def plans(self, start: int, count: int) -> EpisodePlans:
        """Episodes start .. start+count-1 of this sampler's infinite, seeded sequence."""
        ways, k = self.spec.ways, self.spec.shots + self.spec.queries
        classes = np.empty((count, ways), dtype=np.int64)
        idx = np.empty((count, ways, k), dtype=np.int64)
        n = len(self.classes)
        for t in range(count):
            rng = np.random.default_rng([self.seed, start + t])
            pick = rng.choice(n, ways, replace=False)
            if self.uniform:
                keys = rng.random((ways, self.columns.shape[1]))
            else:
                counts = self.counts[pick]
                keys = rng.random((ways, int(counts.max())))
                keys[self.columns[:, : keys.shape[1]] >= counts[:, None]] = 2.0  # past a class's images
            classes[t] = self.classes[pick]
            idx[t] = self.starts[pick][:, None] + np.argsort(keys, axis=1)[:, :k]
        return EpisodePlans(classes, idx[:, :, : self.spec.shots], idx[:, :, self.spec.shots:])


def gather(store: ImageStore, plans: EpisodePlans, device: torch.device | str = "cpu") -> EpisodeBatch:
    """The plans' images, normalised, on the device (ImageStore.load), as an EpisodeBatch."""
    t, ways, shots = plans.support.shape
    queries = plans.query.shape[2]
    x = store.load(plans.image_ids(), device)
    x = x.reshape(t, ways * (shots + queries), *x.shape[1:])
    return EpisodeBatch(support=x[:, : ways * shots], support_labels=episode_labels(t, ways, shots, device),
                        query=x[:, ways * shots:], query_labels=episode_labels(t, ways, queries, device), ways=ways)
