"""Training episodes from several sources, one source an episode (Meta-Dataset's multi-source training).

Episode i's source is drawn from its own generator, seeded by (seed, i, SOURCE_STREAM), with the weights of
dataset.sampling: uniform (each source alike, the paper's default) or proportional to each source's training
classes. The episode itself is then episode i of that source's own sampler, so episode i is the same however
episodes are batched or a run is resumed, and a source's episodes are those it would give alone.
"""

from __future__ import annotations

import numpy as np

from metalearn.data.store import ImageStore
from metalearn.errors import MetalearnError
from metalearn.tasks.episodes import EpisodePlans, EpisodeSampler, TaskSpec
from metalearn.tasks.variable import VariableEpisode, VariableSampler

SOURCE_STREAM = 7  # a third seed word: the source draw never reuses a source sampler's stream (seed, i)


class SourceMixer:
    """Which source episode i of `split` comes from: sources without classes in the split are never drawn."""

    def __init__(self, store: ImageStore, split: str, seed: int):
        sampling = store.meta.get("sampling", "uniform")
        if sampling not in ("uniform", "proportional"):
            raise MetalearnError(f"dataset.sampling={sampling}: choose uniform or proportional")
        self.views = {n: store.source_view(n) for n in store.source_names()}
        self.names = [n for n, v in self.views.items() if len(v.splits.get(split, []))]
        if not self.names:
            raise MetalearnError(f"no source of {store.meta.get('name')} has {split} classes")
        sizes = np.array([len(self.views[n].splits[split]) for n in self.names], dtype=np.float64)
        weights = np.ones_like(sizes) if sampling == "uniform" else sizes
        self.p = weights / weights.sum()
        self.seed = seed

    def source(self, index: int) -> int:
        """The position in self.names of episode `index`'s source."""
        return int(np.random.default_rng([self.seed, index, SOURCE_STREAM]).choice(len(self.names), p=self.p))


class MixedEpisodeSampler:
    """Fixed-shape episodes, each from one source: the meta-batch may mix sources (one shape, one tensor)."""

    def __init__(self, store: ImageStore, split: str, spec: TaskSpec, seed: int):
        self.mixer = SourceMixer(store, split, seed)
        self.samplers = [EpisodeSampler(self.mixer.views[n], split, spec, seed) for n in self.mixer.names]

    def plans(self, start: int, count: int) -> EpisodePlans:
        parts = [self.samplers[self.mixer.source(i)].plans(i, 1) for i in range(start, start + count)]
        return EpisodePlans(np.concatenate([p.classes for p in parts]), np.concatenate([p.support for p in parts]),
                            np.concatenate([p.query for p in parts]))


class MixedVariableSampler:
    """Meta-Dataset's variable episodes, each from one source."""

    def __init__(self, store: ImageStore, split: str, seed: int):
        self.mixer = SourceMixer(store, split, seed)
        self.samplers = [VariableSampler(self.mixer.views[n], split, seed) for n in self.mixer.names]

    def episode(self, index: int) -> VariableEpisode:
        return self.samplers[self.mixer.source(index)].episode(index)
