"""Sampler invariants: disjoint support/query, labels 0..N-1, classes only from the split, seeded plans."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metalearn.config import SyntheticConfig
from metalearn.data.synthetic import build_synthetic
from metalearn.errors import MetalearnError
from metalearn.tasks.episodes import EpisodeSampler, TaskSpec, gather


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_synthetic(SyntheticConfig(num_classes=60, images_per_class=12,
                                           cache_dir=str(tmp_path_factory.mktemp("c"))))


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_plans_are_disjoint_and_from_the_split(store, split):
    spec = TaskSpec(ways=5, shots=2, queries=3)
    plans = EpisodeSampler(store, split, spec, seed=0).plans(0, 50)
    allowed = set(store.splits[split].tolist())
    image_class = np.repeat(np.arange(store.num_classes), store.class_count)
    for t in range(len(plans)):
        classes = plans.classes[t]
        assert len(set(classes)) == 5 and set(classes) <= allowed
        s, q = plans.support[t], plans.query[t]
        assert not set(s.ravel()) & set(q.ravel()), "support and query share an image"
        assert len(set(s.ravel()) | set(q.ravel())) == 5 * 5, "an image appears twice"
        for j, c in enumerate(classes):  # row j holds images of class j only
            assert (image_class[s[j]] == c).all() and (image_class[q[j]] == c).all()


def test_gathered_labels_are_remapped_to_0_n_minus_1(store):
    spec = TaskSpec(ways=4, shots=3, queries=2)
    plans = EpisodeSampler(store, "train", spec, seed=1).plans(0, 3)
    b = gather(store, plans)
    assert b.support.shape == (3, 12, 1, 28, 28) and b.query.shape == (3, 8, 1, 28, 28)
    assert b.support_labels[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert b.query_labels[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # label j's images are exactly the store images of the j-th planned class
    flat = torch.from_numpy(plans.support[1, 2])
    assert torch.allclose(b.support[1, 6:9], store.normalize(store.images[flat]))


def test_episode_i_does_not_depend_on_the_batch_it_is_drawn_in(store):
    s = EpisodeSampler(store, "train", TaskSpec(5, 1, 5), seed=7)
    whole = s.plans(0, 10)
    part = s.plans(4, 3)
    assert np.array_equal(whole.support[4:7], part.support) and np.array_equal(whole.classes[4:7], part.classes)
    assert whole.digest() == s.plans(0, 10).digest()
    assert whole.digest() != EpisodeSampler(store, "train", TaskSpec(5, 1, 5), seed=8).plans(0, 10).digest()


def test_no_class_leaks_between_splits(store):
    seen = {}
    for split in ("train", "val", "test"):
        plans = EpisodeSampler(store, split, TaskSpec(5, 1, 1), seed=0).plans(0, 200)
        seen[split] = set(plans.classes.ravel().tolist())
    assert not (seen["train"] & seen["val"] or seen["train"] & seen["test"] or seen["val"] & seen["test"])


def test_ways_above_the_split_class_count_is_explained(store):
    n = len(store.splits["val"])
    with pytest.raises(MetalearnError, match=f"ways={n + 1} but the val split .* has only {n} classes"):
        EpisodeSampler(store, "val", TaskSpec(n + 1, 1, 1), seed=0)


def test_too_many_shots_and_queries_is_explained(store):
    with pytest.raises(MetalearnError, match="shots\\+queries=5\\+8=13 but train class .* have only 12"):
        EpisodeSampler(store, "train", TaskSpec(5, 5, 8), seed=0)


@pytest.mark.parametrize("bad", [{"ways": 0}, {"shots": -1}, {"queries": 0}, {"ways": 1}])
def test_non_positive_task_sizes_are_rejected(bad):
    spec = {"ways": 5, "shots": 1, "queries": 1, **bad}
    key = next(iter(bad))
    with pytest.raises(MetalearnError, match=key):
        TaskSpec(**spec)


def test_unequal_class_sizes_are_sampled_correctly():
    from metalearn.data.store import ImageStore

    counts = [3, 7, 4, 9]
    images = torch.arange(sum(counts), dtype=torch.uint8).reshape(-1, 1, 1, 1)
    store = ImageStore.from_classes(images, counts, list("abcd"), {"train": np.arange(4)})
    plans = EpisodeSampler(store, "train", TaskSpec(4, 1, 2), seed=0).plans(0, 100)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for t in range(100):
        for j, c in enumerate(plans.classes[t]):
            idx = np.concatenate([plans.support[t, j], plans.query[t, j]])
            assert ((idx >= starts[c]) & (idx < starts[c] + counts[c])).all()


def test_load_is_take_then_normalize_with_or_without_the_float_copy(store, monkeypatch):
    import metalearn.data.store as store_module

    index = np.array([[3, 7, 7], [0, 59 * 12 + 11, 5]])
    expected = store.normalize(store.take(index))
    assert expected.shape == (6, *store.image_shape) and expected.dtype == torch.float32
    store._normalized = None
    assert torch.equal(store.load(index), expected)  # the float copy: bitwise the same values
    assert store._normalized is not None
    monkeypatch.setattr(store_module, "FLOAT_COPY_MAX_BYTES", 0)
    store._normalized = None
    assert torch.equal(store.load(index), expected) and store._normalized is None  # too big: no copy kept
