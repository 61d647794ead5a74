"""Episodes: plans first (which images form each task), pixels later.

A plan is drawn from a generator seeded by (seed, episode index), so episode i
is the same whatever batch it is drawn in, a resumed run sees the same
episodes as an uninterrupted one, and an evaluation set is a fixed list that
every method and run sees identically.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch

from metalearn.data.store import ImageStore
from metalearn.errors import MetalearnError

log = logging.getLogger("metalearn")


@dataclass(frozen=True)
class TaskSpec:
    """What an episode is: N ways, K shots, Q queries per class, and how its images are chosen.

    within: draw each episode's classes from one group (Omniglot's alphabet, tieredImageNet's superclass, a
    folder of class folders), the hierarchical episodes of Lake et al.'s one-shot benchmark and Meta-Dataset;
    None: from the whole split. disjoint_drawers: support and query images from different drawers (Omniglot:
    the person who drew the character), one set of drawers per side shared by every class of the episode.
    """

    ways: int
    shots: int
    queries: int
    within: str | None = None
    disjoint_drawers: bool = False

    def __post_init__(self) -> None:
        for key in ("ways", "shots", "queries"):
            value = getattr(self, key)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise MetalearnError(f"{key} must be a positive whole number, got {value!r} (e.g. {key}=5)")
        if self.ways < 2:
            raise MetalearnError(f"ways must be at least 2 for a classification task, got {self.ways}")

    @property
    def tag(self) -> str:
        """5w1s; 20w1s_within-alphabet_drawers for a hierarchical, drawer-disjoint setting."""
        within = f"_within-{self.within}" if self.within else ""
        return f"{self.ways}w{self.shots}s{within}{'_drawers' if self.disjoint_drawers else ''}"

    def protocol(self) -> dict:
        """The sampling keys beyond N-way K-shot, for summaries (empty for plain random episodes)."""
        return {**({"within": self.within} if self.within else {}),
                **({"disjoint_drawers": True} if self.disjoint_drawers else {})}


@dataclass
class EpisodePlans:
    """Image indices of T tasks: classes [T, ways], support [T, ways, shots], query [T, ways, queries];
    for hierarchical episodes, each task's group [T] (a class's group name is group_names[groups[t]])."""

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray
    groups: np.ndarray | None = None
    group_names: list[str] | None = None

    def __len__(self) -> int:
        return self.classes.shape[0]

    def digest(self) -> str:
        """A fingerprint: two evaluations are comparable episode by episode iff their digests match.
        A hierarchical plan's groups are part of it (plain plans hash as they always did)."""
        h = hashlib.sha256()
        for a in (self.classes, self.support, self.query):
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        if self.groups is not None:
            h.update(np.ascontiguousarray(self.groups, dtype=np.int64).tobytes())
            h.update("\n".join(self.group_names or []).encode())
        return h.hexdigest()[:16]

    def slice(self, start: int, stop: int) -> EpisodePlans:
        groups = None if self.groups is None else self.groups[start:stop]
        return EpisodePlans(self.classes[start:stop], self.support[start:stop], self.query[start:stop], groups,
                            self.group_names)

    def to_dict(self) -> dict[str, np.ndarray]:
        out = {"classes": self.classes, "support": self.support, "query": self.query}
        if self.groups is not None:
            out |= {"groups": self.groups, "group_names": np.array(self.group_names or [], dtype=str)}
        return out

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
    # [T, S+Q] the images' store indices, support then query (a frozen encoder's cached codes are read by them);
    # None for images that are not the stored ones (augmented copies, synthetic test batches)
    index: np.ndarray | None = None

    @property
    def tasks(self) -> int:
        return self.support.shape[0]

    def chunks(self, size: int) -> list[EpisodeBatch]:
        """The meta-batch as consecutive groups of at most `size` tasks (views, no copy)."""
        return [EpisodeBatch(self.support[i:i + size], self.support_labels[i:i + size], self.query[i:i + size],
                             self.query_labels[i:i + size], self.ways,
                             None if self.index is None else self.index[i:i + size]) for i in range(0, self.tasks, size)]

    def map_images(self, fn) -> EpisodeBatch:
        """The same episodes with `fn` applied to the support images, then to the query images (new pixels: no longer
        the stored images, so without their store indices)."""
        return EpisodeBatch(fn(self.support), self.support_labels, fn(self.query), self.query_labels, self.ways)


@functools.lru_cache(maxsize=64)
def episode_labels(tasks: int, ways: int, per_class: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[tasks, ways*per_class] labels 0..ways-1, grouped by class as the images of a plan are.
    Cached: the same few shapes recur every step (an expanded view, so never written in place)."""
    return torch.arange(ways, device=device).repeat_interleave(per_class).expand(tasks, -1)


SKIP_HINT = {"val": " or skip validation with val.every=0", "test": " or skip the test with test.episodes=0"}


class EpisodeSampler:
    """Draws N-way K-shot Q-query plans from one split of a store (within one group of classes and from
    disjoint drawers when the spec says so)."""

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
        self.group_members: list[np.ndarray] | None = None
        if spec.within:
            self._index_groups(store, name)
        self.by_drawer: np.ndarray | None = None
        if spec.disjoint_drawers:
            self._index_drawers(store, name)

    def _index_groups(self, store: ImageStore, name: str) -> None:
        """The split's classes by group (positions into self.classes); groups with fewer than `ways` classes
        are skipped, and a setting no group can satisfy is refused."""
        spec = self.spec
        if store.class_groups is None:
            raise MetalearnError(f"sampler/test within={spec.within} draws each episode's classes from one group, but "
                                 f"{name} has no level above its classes (Omniglot groups by alphabet, tieredImageNet's "
                                 f"pickles by superclass, an image_folder root/<group>/<class>/ by folder); drop within=")
        if spec.within != store.group_by:
            raise MetalearnError(f"within={spec.within}: {name} groups its classes by {store.group_by}; "
                                 f"use within={store.group_by}")
        names = np.array([store.class_groups[c] for c in self.classes])
        self.group_names = sorted(set(names.tolist()))
        members = [np.flatnonzero(names == g) for g in self.group_names]
        sizes = [len(m) for m in members]
        self.eligible = [i for i, m in enumerate(members) if len(m) >= spec.ways]
        if not self.eligible:
            largest = int(np.argmax(sizes))
            raise MetalearnError(f"ways={spec.ways} within one {spec.within}, but the largest {spec.within} of the "
                                 f"{self.split} split, {self.group_names[largest]}, has {sizes[largest]} classes; "
                                 f"use ways<={sizes[largest]} or drop within=")
        skipped = len(members) - len(self.eligible)
        if skipped:
            small = [f"{self.group_names[i]} ({sizes[i]})" for i in range(len(members)) if sizes[i] < spec.ways]
            log.info("%s episodes within one %s: %d of %d %s groups have fewer than %d classes and are skipped: %s",
                     self.split, spec.within, skipped, len(members), self.split, spec.ways, ", ".join(small[:5]))
        self.group_members = members

    def _index_drawers(self, store: ImageStore, name: str) -> None:
        """by_drawer[i, d]: the store index of split class i's image by the d-th drawer every class has."""
        spec = self.spec
        if store.drawers is None or (store.drawers < 0).all():
            raise MetalearnError(f"disjoint_drawers=true takes support and query images from different drawers, but "
                                 f"{name} records no drawer per image (Omniglot's file names do); drop disjoint_drawers=")
        per_class = [store.drawers[s:s + c] for s, c in zip(self.starts, self.counts, strict=True)]
        common = set(per_class[0].tolist()) if per_class else set()
        for d in per_class[1:]:
            common &= set(d.tolist())
        common.discard(-1)
        self.drawer_ids = np.array(sorted(common), dtype=np.int64)
        if len(self.drawer_ids) < spec.shots + spec.queries:
            raise MetalearnError(f"disjoint_drawers=true needs shots+queries={spec.shots + spec.queries} drawers every "
                                 f"{self.split} class has, and {name}'s {self.split} classes share "
                                 f"{len(self.drawer_ids)}; lower shots or queries")
        table = np.empty((len(per_class), len(self.drawer_ids)), dtype=np.int64)
        for i, d in enumerate(per_class):
            first = {int(v): j for j, v in reversed(list(enumerate(d.tolist())))}  # a drawer's first image
            table[i] = [self.starts[i] + first[int(v)] for v in self.drawer_ids]
        self.by_drawer = table

    def plans(self, start: int, count: int) -> EpisodePlans:
        """Episodes start .. start+count-1 of this sampler's infinite, seeded sequence."""
        if self.group_members is not None or self.by_drawer is not None:
            return self._hierarchical_plans(start, count)
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

    def _hierarchical_plans(self, start: int, count: int) -> EpisodePlans:
        """The plans of within-group and/or drawer-disjoint episodes. A group is drawn uniformly among those
        with enough classes (every alphabet weighs the same, as in Lake et al.'s trials, however many
        characters it has); with disjoint drawers, one random set of `shots` drawers gives every class's
        support and another, disjoint set of `queries` drawers its queries."""
        spec = self.spec
        ways, k = spec.ways, spec.shots + spec.queries
        classes = np.empty((count, ways), dtype=np.int64)
        idx = np.empty((count, ways, k), dtype=np.int64)
        groups = np.full(count, -1, dtype=np.int64)
        n = len(self.classes)
        for t in range(count):
            rng = np.random.default_rng([self.seed, start + t])
            if self.group_members is not None:
                g = self.eligible[int(rng.integers(len(self.eligible)))]
                members = self.group_members[g]
                pick = members[rng.choice(len(members), ways, replace=False)]
                groups[t] = g
            else:
                pick = rng.choice(n, ways, replace=False)
            classes[t] = self.classes[pick]
            if self.by_drawer is not None:
                drawers = rng.permutation(self.by_drawer.shape[1])[:k]  # shots drawers, then queries drawers
                idx[t] = self.by_drawer[pick][:, drawers]
            else:
                keys = rng.random((ways, int(self.counts[pick].max())))
                keys[self.columns[:, : keys.shape[1]] >= self.counts[pick][:, None]] = 2.0
                idx[t] = self.starts[pick][:, None] + np.argsort(keys, axis=1)[:, :k]
        within = self.group_members is not None
        return EpisodePlans(classes, idx[:, :, : spec.shots], idx[:, :, spec.shots:], groups if within else None,
                            self.group_names if within else None)


def gather(store: ImageStore, plans: EpisodePlans, device: torch.device | str = "cpu") -> EpisodeBatch:
    """The plans' images, normalised, on the device (ImageStore.load), as an EpisodeBatch."""
    t, ways, shots = plans.support.shape
    queries = plans.query.shape[2]
    ids = plans.image_ids()
    x = store.load(ids, device)
    x = x.reshape(t, ways * (shots + queries), *x.shape[1:])
    return EpisodeBatch(support=x[:, : ways * shots], support_labels=episode_labels(t, ways, shots, device),
                        query=x[:, ways * shots:], query_labels=episode_labels(t, ways, queries, device), ways=ways,
                        index=ids)
