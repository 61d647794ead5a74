"""Variable-way, variable-shot episodes: Meta-Dataset's episode sampler (Triantafillou et al., ICLR 2020, §3.2
"Sampling of episodes"; the authors' code: meta_dataset/data/sampling.py, EpisodeDescriptionSampler with the
constants of data_config_common.gin).

Each episode, drawn from its own generator seeded by (seed, episode index) as every plan here is:

1. ways N uniform in [min_ways, min(max_ways, classes in the split)] (5 and 50), N classes without replacement;
2. queries per class q = min(max_query, floor(min over the N classes of images / 2)) (max_query 10): balanced;
3. the support set's size S = min(max_support, sum over classes of floor(beta * min(max_contribution,
   remaining_c) + 1)), beta uniform in [0, 1), remaining_c = images_c - q (max_support 500, contribution 100);
4. each class's shots: 1 + floor(p_c * (S - N)), p_c proportional to images_c * exp(u_c), u_c uniform in
   [log 1/2, log 2], capped at remaining_c: class-imbalanced, at least one shot each;
5. which images: a random permutation of each class's images, its first shots_c the support and the next q the
   queries, so no image is in both.

Support images are grouped by class, labels 0..N-1 in the order the classes were drawn; queries likewise.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from metalearn.data.store import ImageStore
from metalearn.errors import MetalearnError
from metalearn.tasks.episodes import EpisodeBatch


@dataclass(frozen=True)
class VariableRules:
    """Meta-Dataset's constants (EpisodeDescriptionConfig's defaults in the authors' gin setup)."""

    min_ways: int = 5
    max_ways: int = 50
    max_query: int = 10
    max_support: int = 500
    max_contribution: int = 100
    min_log_weight: float = math.log(0.5)
    max_log_weight: float = math.log(2.0)


@dataclass(frozen=True)
class VariableEpisode:
    """One episode's store indices: classes [N], support [S] with labels [S], query [N*q] with labels."""

    classes: np.ndarray
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray

    @property
    def ways(self) -> int:
        return len(self.classes)

    @property
    def shots(self) -> np.ndarray:
        return np.bincount(self.support_labels, minlength=self.ways)


@dataclass
class VariablePlans:
    episodes: list[VariableEpisode]

    def __len__(self) -> int:
        return len(self.episodes)

    def digest(self) -> str:
        """A fingerprint of every episode's classes, support and queries, in order (lengths included, so no two
        different lists hash alike by concatenation)."""
        h = hashlib.sha256(b"variable")
        for e in self.episodes:
            for a in (e.classes, e.support, e.support_labels, e.query, e.query_labels):
                h.update(np.int64(len(a)).tobytes())
                h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def to_dict(self) -> dict[str, np.ndarray]:
        """Flat arrays with each episode's offsets, for an .npz (np.savez: data only)."""
        out: dict[str, np.ndarray] = {}
        for key in ("classes", "support", "support_labels", "query", "query_labels"):
            parts = [getattr(e, key) for e in self.episodes]
            out[key] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            out[f"{key}_offsets"] = np.cumsum([0, *(len(p) for p in parts)])
        return out

    def slice(self, start: int, stop: int) -> VariablePlans:
        return VariablePlans(self.episodes[start:stop])


class VariableSampler:
    """Meta-Dataset's variable episodes from one split of a store."""

    def __init__(self, store: ImageStore, split: str, seed: int, rules: VariableRules = VariableRules()):
        if split not in store.splits:
            raise MetalearnError(f"split {split!r} does not exist; the dataset has: {', '.join(store.splits)}")
        self.classes = store.splits[split]
        self.counts = store.class_count[self.classes]
        self.starts = store.class_start[self.classes]
        self.rules, self.seed = rules, seed
        name = store.meta.get("name", "the dataset")
        if len(self.classes) < rules.min_ways:
            raise MetalearnError(f"variable episodes have at least {rules.min_ways} ways (Meta-Dataset's rule) but the "
                                 f"{split} split of {name} has {len(self.classes)} classes; give it more classes")
        if len(self.classes) and int(self.counts.min()) < 2:
            few = store.class_names[int(self.classes[int(np.argmin(self.counts))])]
            raise MetalearnError(f"variable episodes need at least 2 images a class (a support image and a query); "
                                 f"{split} class {few} of {name} has {int(self.counts.min())}")

    def episode(self, index: int) -> VariableEpisode:
        r = self.rules
        rng = np.random.default_rng([self.seed, index])
        n = len(self.classes)
        ways = int(rng.integers(r.min_ways, min(r.max_ways, n) + 1))
        pick = rng.choice(n, ways, replace=False)
        images = self.counts[pick].astype(np.int64)
        q = int(min(r.max_query, int((images // 2).min())))
        remaining = images - q
        beta = rng.random()
        size = int(min(np.floor(beta * np.minimum(r.max_contribution, remaining) + 1).sum(), r.max_support))
        weights = images * np.exp(rng.uniform(r.min_log_weight, r.max_log_weight, size=ways))
        shots = np.minimum(np.floor(weights / weights.sum() * (size - ways)).astype(np.int64) + 1, remaining)
        support, query = [], []
        for c in range(ways):
            order = self.starts[pick[c]] + rng.permutation(int(images[c]))
            support.append(order[: shots[c]])
            query.append(order[shots[c]: shots[c] + q])
        labels = np.arange(ways)
        return VariableEpisode(self.classes[pick], np.concatenate(support), np.repeat(labels, shots),
                               np.concatenate(query), np.repeat(labels, q))

    def plans(self, start: int, count: int) -> VariablePlans:
        return VariablePlans([self.episode(start + t) for t in range(count)])


def gather_one(store: ImageStore, episode: VariableEpisode, device: torch.device | str = "cpu") -> EpisodeBatch:
    """One variable episode's images as a batch of one task (support grouped by class, labels as drawn)."""
    ids = np.concatenate([episode.support, episode.query])
    x = store.load(ids, device)
    s = len(episode.support)
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.int64, device=device)[None]  # noqa: E731
    return EpisodeBatch(support=x[None, :s], support_labels=as_tensor(episode.support_labels), query=x[None, s:],
                        query_labels=as_tensor(episode.query_labels), ways=episode.ways, index=ids[None])
