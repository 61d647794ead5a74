"""Hierarchical episodes (classes of one group) and drawer-disjoint support and query (issue 39).

Lake et al.'s one-shot protocol draws a trial's 20 characters from one alphabet, and its support and
query images from different drawers; every check here is on the plans themselves."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch
from test_data import omni_cfg

from metalearn.config import ImageFolderConfig, MiniImageNetConfig
from metalearn.data.image_folder import build_image_folder
from metalearn.data.omniglot import alphabet_group, build_omniglot, drawer_of
from metalearn.data.store import ImageStore
from metalearn.data.tiered_imagenet import build_tiered_imagenet
from metalearn.errors import MetalearnError
from metalearn.tasks.episodes import EpisodeSampler, TaskSpec

SMALL = {"train": ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"],
         "test": ["Japanese_(katakana)", "Sanskrit", "Tagalog"]}


def grouped_store(sizes: dict[str, int], per_class: int = 6, drawers: bool = True) -> ImageStore:
    """Classes in groups of the given sizes (all in the test split), each image drawn by drawer 1..per_class."""
    names = [f"{g}/c{i:02d}" for g, n in sizes.items() for i in range(n)]
    images = torch.arange(len(names) * per_class, dtype=torch.int64).remainder(256).to(torch.uint8)
    images = images.reshape(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    ids = np.arange(len(names))
    return ImageStore.from_classes(images, [per_class] * len(names), names, {"train": ids, "val": ids[:0], "test": ids[:0]},
                                   class_groups=[n.split("/")[0] for n in names], group_by="alphabet",
                                   drawers=np.tile(np.arange(1, per_class + 1), len(names)) if drawers else None)


def groups_of(store: ImageStore, classes: np.ndarray) -> set[str]:
    return {store.class_groups[c] for c in classes}


def test_every_episode_takes_its_classes_from_one_group_and_records_it():
    store = grouped_store({"A": 8, "B": 5, "C": 3})
    plans = EpisodeSampler(store, "train", TaskSpec(4, 1, 2, within="alphabet"), seed=0).plans(0, 300)
    for t in range(len(plans)):
        assert groups_of(store, plans.classes[t]) == {plans.group_names[plans.groups[t]]}
        assert len(set(plans.classes[t])) == 4
    counts = np.bincount(plans.groups, minlength=3)
    assert counts[2] == 0, "group C has 3 classes, fewer than 4 ways, and is skipped"
    assert 100 < counts[0] < 200 and 100 < counts[1] < 200, "each eligible group is drawn about equally often"
    plain = EpisodeSampler(store, "train", TaskSpec(4, 1, 2), seed=0).plans(0, 300)
    assert plain.groups is None and any(len(groups_of(store, c)) > 1 for c in plain.classes)
    again = EpisodeSampler(store, "train", TaskSpec(4, 1, 2, within="alphabet"), seed=0).plans(100, 5)
    assert np.array_equal(again.classes, plans.classes[100:105]) and np.array_equal(again.groups, plans.groups[100:105])
    assert "groups" in plans.to_dict() and plans.digest() != plain.digest()


def test_small_groups_are_skipped_with_a_count_and_an_impossible_setting_names_the_largest(caplog):
    store = grouped_store({"A": 8, "B": 5, "C": 3})
    with caplog.at_level(logging.INFO, logger="metalearn"):
        EpisodeSampler(store, "train", TaskSpec(5, 1, 1, within="alphabet"), seed=0)
    assert "1 of 3 train groups have fewer than 5 classes and are skipped: C (3)" in caplog.text
    with pytest.raises(MetalearnError, match="largest alphabet of the train split, A, has 8 classes; use ways<=8"):
        EpisodeSampler(store, "train", TaskSpec(9, 1, 1, within="alphabet"), seed=0)
    with pytest.raises(MetalearnError, match="groups its classes by alphabet; use within=alphabet"):
        EpisodeSampler(store, "train", TaskSpec(2, 1, 1, within="superclass"), seed=0)
    flat = ImageStore.from_classes(store.images, store.class_count, store.class_names, store.splits)
    with pytest.raises(MetalearnError, match="has no level above its classes"):
        EpisodeSampler(flat, "train", TaskSpec(2, 1, 1, within="alphabet"), seed=0)


def test_drawer_disjoint_episodes_share_one_drawer_set_per_side():
    store = grouped_store({"A": 8, "B": 5}, per_class=6)
    spec = TaskSpec(5, 2, 3, within="alphabet", disjoint_drawers=True)
    plans = EpisodeSampler(store, "train", spec, seed=3).plans(0, 200)
    image_class = np.repeat(np.arange(store.num_classes), store.class_count)
    for t in range(len(plans)):
        s, q = store.drawers[plans.support[t]], store.drawers[plans.query[t]]
        assert not set(s.ravel()) & set(q.ravel()), "a drawer on both sides"
        assert (s == s[0]).all() and (q == q[0]).all(), "every class uses the same drawers on a side"
        for j, c in enumerate(plans.classes[t]):
            assert (image_class[plans.support[t, j]] == c).all() and (image_class[plans.query[t, j]] == c).all()
    twice = grouped_store({"A": 4}, per_class=8)  # 8 images per class, by 4 drawers twice each
    twice.drawers = np.tile([1, 2, 3, 4], 8)
    with pytest.raises(MetalearnError, match="needs shots\\+queries=5 drawers every train class has, .* share 4"):
        EpisodeSampler(twice, "train", TaskSpec(2, 1, 4, disjoint_drawers=True), seed=0)
    with pytest.raises(MetalearnError, match="records no drawer per image"):
        EpisodeSampler(grouped_store({"A": 4}, drawers=False), "train", TaskSpec(2, 1, 1, disjoint_drawers=True), 0)


def test_omniglot_names_drawers_and_alphabets():
    assert drawer_of("images_background_small1/Balinese/character01/0108_07.png") == 7
    assert drawer_of("folder/noname.png") == -1
    assert alphabet_group("Korean/character05/rot90/mirror") == "Korean/rot90/mirror"
    assert alphabet_group("Sanskrit/character01") == "Sanskrit"


def test_lake_protocol_on_the_small2_test_alphabets(omniglot, tmp_path, caplog):
    """20-way within one alphabet, drawer-disjoint: only katakana (47) and Sanskrit (42) have 20
    characters; Tagalog (17) is skipped; every character's 20 images are by drawers 1..20."""
    store = build_omniglot(omni_cfg(omniglot, tmp_path, rotations=["train"], alphabets=SMALL))
    assert store.group_by == "alphabet" and set(np.unique(store.drawers)) == set(range(1, 21))
    for c in store.splits["test"]:
        assert sorted(store.drawers[store.class_start[c]:store.class_start[c] + 20]) == list(range(1, 21))
    with caplog.at_level(logging.INFO, logger="metalearn"):
        sampler = EpisodeSampler(store, "test", TaskSpec(20, 1, 15, "alphabet", True), seed=2)
    assert "Tagalog (17)" in caplog.text
    plans = sampler.plans(0, 600)
    assert set(np.unique(plans.groups)) == {0, 1} and plans.group_names[:2] == ["Japanese_(katakana)", "Sanskrit"]
    for t in range(len(plans)):
        assert len({store.class_names[c].split("/")[0] for c in plans.classes[t]}) == 1
        assert not set(store.drawers[plans.support[t]].ravel()) & set(store.drawers[plans.query[t]].ravel())
    train = EpisodeSampler(store, "train", TaskSpec(20, 1, 5, "alphabet"), seed=0).plans(0, 50)
    for t in range(len(train)):  # a rotated alphabet is its own group: no upright and rotated mix
        assert len({store.class_groups[c] for c in train.classes[t]}) == 1


def test_image_folder_with_two_levels_groups_by_folder(tmp_path):
    from PIL import Image

    for g, n in {"site_a": 3, "site_b": 2}.items():
        for c in range(n):
            d = tmp_path / "root" / g / f"class{c}"
            d.mkdir(parents=True)
            for k in range(3):
                Image.new("L", (8, 8), 40 * c + k).save(d / f"{k}.png")
    store = build_image_folder(ImageFolderConfig(root=str(tmp_path / "root"), image_size=8, channels=1,
                                                 split_fractions=[1, 0, 0], cache_dir=str(tmp_path / "c")))
    assert store.class_names == ["site_a/class0", "site_a/class1", "site_a/class2", "site_b/class0", "site_b/class1"]
    assert store.group_by == "folder" and store.class_groups == ["site_a"] * 3 + ["site_b"] * 2
    plans = EpisodeSampler(store, "train", TaskSpec(3, 1, 1, within="folder"), seed=0).plans(0, 10)
    assert all(groups_of(store, c) == {"site_a"} for c in plans.classes)


def test_tiered_imagenet_pickles_give_each_class_its_superclass(tmp_path):
    from test_datasets import colour_of, encoded

    for s, n in {"train": 4, "val": 2, "test": 2}.items():
        labels = np.repeat(np.arange(n), 2)
        pngs = [np.frombuffer(encoded(colour_of(int(c), k), 84), dtype=np.uint8) for k, c in enumerate(labels)]
        with open(tmp_path / f"{s}_images_png.pkl", "wb") as f:
            pickle.dump(pngs, f)
        with open(tmp_path / f"{s}_labels.pkl", "wb") as f:
            pickle.dump({"label_specific": labels, "label_specific_str": [f"n{s}{c}" for c in range(n)],
                         "label_general": labels // 2, "label_general_str": [f"{s}_cat{g}" for g in range(n)]}, f)
    store = build_tiered_imagenet(MiniImageNetConfig(name="tiered_imagenet", root=str(tmp_path),
                                                     cache_dir=str(tmp_path / "c")))
    train = store.splits["train"]
    assert store.group_by == "superclass"
    assert [store.class_groups[c] for c in train] == ["train_cat0", "train_cat0", "train_cat1", "train_cat1"]
    plans = EpisodeSampler(store, "train", TaskSpec(2, 1, 1, within="superclass"), seed=0).plans(0, 20)
    assert all(len(groups_of(store, c)) == 1 for c in plans.classes)


@pytest.mark.e2e
def test_training_and_eval_take_hierarchical_drawer_disjoint_settings(omniglot, tmp_path):
    """Within-alphabet training episodes, a test.extra setting beside the plain ones, the same protocol from
    metalearn-eval (same episodes: same digest), and the plain settings' episodes unchanged by it."""
    import json

    from conftest import cli

    r = cli("metalearn-train", "dataset=omniglot_small", f"dataset.root={omniglot}", "debug=smoke", "run_dir=run",
            "sampler.train_ways=5", "sampler.within=alphabet", "sampler.disjoint_drawers=true", "test.episodes=12",
            "test.extra=[{ways:20,within:alphabet,disjoint_drawers:true}]", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 of 3 test groups have fewer than 20 classes and are skipped: Tagalog (17)" in r.stderr
    test = json.loads((tmp_path / "run" / "summary.json").read_text())["test"]
    lake = test["20w1s_within-alphabet_drawers"]
    assert lake["within"] == "alphabet" and lake["disjoint_drawers"] is True and lake["ways"] == 20
    assert "within" not in test["5w1s"]
    e = cli("metalearn-eval", "run=run", "episodes=12", "ways=20", "within=alphabet", "disjoint_drawers=true",
            cwd=tmp_path)
    assert e.returncode == 0, e.stderr[-2000:]
    assert "20-way 1-shot within one alphabet, drawer-disjoint" in e.stdout and lake["episodes_digest"] in e.stdout
    bad = cli("metalearn-train", "dataset=omniglot_small", f"dataset.root={omniglot}", "debug=smoke",
              "sampler.within=alphabet", "sampler.train_ways=41", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "the largest alphabet of the train split, Korean" in bad.stderr and "has 40 classes" in bad.stderr
