"""Several datasets as one run's data (dataset=multi): Meta-Dataset's multi-source training.

    metalearn-train dataset=multi 'dataset.sources=[omniglot_small,synthetic]' sampler=variable method=protonet

Each source is its own dataset option (configs/dataset/<name>.yaml), built at the run's image size and converted to
the run's channels, then the sources are laid end to end in one store: a class's id is its source's offset plus its
own id, its name `<source>:<name>`, and each source keeps its own train/val/test classes (no class moves between
splits, none is shared by two sources). Training episodes come from one source at a time (tasks.multi_source); the
validation and the test score each source alone and report their mean (Triantafillou et al., ICLR 2020, §4).
The pixels are standardised with the union's training statistics, one normalisation for every source.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from metalearn.config.datasets import MultiSourceConfig
from metalearn.data.cross_domain import match_channels, options, target_config
from metalearn.data.store import ImageStore
from metalearn.errors import MetalearnError
from metalearn.registry import DATASETS


def source_stores(cfg: MultiSourceConfig) -> list[tuple[str, ImageStore]]:
    """Each source built at the run's image size and channels, or one line naming the source and the problem."""
    from metalearn.data import build_store

    if len(cfg.sources) < 1:
        raise MetalearnError("dataset=multi needs dataset.sources=[a,b,...], dataset options such as "
                             f"{', '.join(o for o in options() if o != 'multi')}")
    twice = sorted({s for s in cfg.sources if list(cfg.sources).count(s) > 1})
    if twice:
        raise MetalearnError(f"dataset.sources lists {', '.join(twice)} twice; a source would weigh double")
    unknown = [k for k, v in cfg.roots.items() if v is not None and k not in cfg.sources]
    if unknown:
        raise MetalearnError(f"dataset.roots names {', '.join(unknown)}, which is not in dataset.sources="
                             f"{list(cfg.sources)}; add it there or drop its root")
    out = []
    known = [o for o in options() if o != "multi"]
    for name in cfg.sources:
        if name not in known:
            raise MetalearnError(f"dataset.sources lists {name}, which is not a dataset option to combine; choose from: "
                                 f"{', '.join(known)}")
        target = target_config(name, cfg.roots.get(name), cfg.image_size)
        try:
            store = build_store(target)
        except MetalearnError as e:
            raise MetalearnError(f"dataset.sources: {name}: {e}".replace("dataset.root", f"dataset.roots.{name}")) from None
        if store.image_shape[1:] != (cfg.image_size,) * 2:
            raise MetalearnError(f"dataset.sources: {name} was built at {store.image_shape[1:]} pixels, not "
                                 f"dataset.image_size={cfg.image_size}: its loader does not take dataset.image_size")
        try:
            images = match_channels(store.images, cfg.channels)
        except ValueError as e:
            raise MetalearnError(f"dataset.sources: {name} {e}; set dataset.channels to 1 or 3") from None
        out.append((name, store if images is store.images else replace(store, images=images, _normalized=None)))
    return out


@DATASETS.register("multi")
def build_multi(cfg: MultiSourceConfig) -> ImageStore:
    return combine(source_stores(cfg), cfg.sampling)


def combine(parts: list[tuple[str, ImageStore]], sampling: str = "uniform") -> ImageStore:
    """The sources laid end to end: class ids offset by the classes before them, names `<source>:<name>`, each
    source's splits kept; `sources` says which classes are whose."""
    names, counts, sources, offset = [], [], {}, 0
    splits: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for name, store in parts:
        names += [f"{name}:{c}" for c in store.class_names]
        counts.append(store.class_count)
        sources[name] = offset + np.arange(store.num_classes)
        for split in splits:
            splits[split].append(offset + store.splits.get(split, np.zeros(0, dtype=np.int64)))
        offset += store.num_classes
    # drawers only where every source records them (Omniglot's); class groups are per dataset, so not carried over
    drawers = (np.concatenate([s.drawers for _, s in parts]) if all(s.drawers is not None for _, s in parts)
               else None)
    return ImageStore.from_classes(torch.cat([s.images for _, s in parts]), np.concatenate(counts), names,
                                   {k: np.concatenate(v) for k, v in splits.items()}, drawers=drawers,
                                   sources=sources, invert=all(s.invert for _, s in parts),
                                   meta={"name": "+".join(n for n, _ in parts), "sampling": sampling,
                                         "sources": {n: s.describe() for n, s in parts}})
