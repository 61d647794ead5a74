"""Several training sources (dataset=multi, metalearn/data/multi_source.py, metalearn/tasks/multi_source.py):
one store laid out source by source, episodes from one source at a time, results per source and their mean,
cross-domain tests on a user's image folder, and the report's per-source table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from metalearn.data.multi_source import combine
from metalearn.data.store import ImageStore
from metalearn.engine.evaluate import mean_over_sources, per_source
from metalearn.errors import MetalearnError
from metalearn.report import Result, _ranks, per_source_tables
from metalearn.tasks.episodes import EpisodeSampler, TaskSpec
from metalearn.tasks.multi_source import MixedEpisodeSampler, MixedVariableSampler
from tests.conftest import cli


def source(classes: int, per_class: int, seed: int, size: int = 8) -> ImageStore:
    """A store of `classes` classes split 60/20/20 in order, its pixels drawn from `seed`."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (classes * per_class, 1, size, size), dtype=torch.uint8, generator=g)
    a, b = int(classes * 0.6), int(classes * 0.8)
    splits = {"train": np.arange(a), "val": np.arange(a, b), "test": np.arange(b, classes)}
    return ImageStore.from_classes(images, [per_class] * classes, [f"c{i}" for i in range(classes)], splits)


def two_sources(sampling: str = "uniform") -> ImageStore:
    return combine([("small", source(20, 6, 0)), ("large", source(60, 6, 1))], sampling)


def test_sources_are_laid_end_to_end_and_keep_their_own_splits():
    a, b = source(20, 6, 0), source(60, 6, 1)
    store = combine([("small", a), ("large", b)])
    assert store.num_classes == 80 and store.images.shape[0] == 80 * 6
    assert store.class_names[0] == "small:c0" and store.class_names[20] == "large:c0"
    np.testing.assert_array_equal(store.sources["large"], np.arange(20, 80))
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(store.source_view("small").splits[split], a.splits[split])
        np.testing.assert_array_equal(store.source_view("large").splits[split], 20 + b.splits[split])
    # the same pixels at the offset indices, and one normalisation for the union
    assert torch.equal(store.images[store.class_start[20]:store.class_start[21]], b.images[:6])
    view = store.source_view("large")
    assert (view.mean, view.std) == (store.mean, store.std) and view.images is store.images
    store.check()  # splits stay disjoint: no class leaks between them
    with pytest.raises(MetalearnError, match="not one of this dataset's sources: small, large"):
        store.source_view("other")


def test_each_episode_comes_from_one_source_and_its_training_classes():
    store = two_sources()
    sampler = MixedEpisodeSampler(store, "train", TaskSpec(5, 1, 2), seed=3)
    plans = sampler.plans(0, 400)
    owner = np.zeros(store.num_classes, dtype=np.int64)
    owner[store.sources["large"]] = 1
    per_episode = owner[plans.classes]
    assert (per_episode == per_episode[:, :1]).all()  # never two sources in one episode
    assert np.isin(plans.classes, store.splits["train"]).all()
    # support and queries disjoint within each episode
    for t in range(20):
        assert not set(plans.support[t].ravel()) & set(plans.query[t].ravel())
    # uniform over sources: about half each (400 draws: 0.5 +- 0.075 at 3 sigma)
    assert abs(per_episode[:, 0].mean() - 0.5) < 0.075


def test_proportional_sampling_follows_the_training_classes():
    store = two_sources("proportional")  # 12 and 36 training classes: 1/4 and 3/4
    sampler = MixedEpisodeSampler(store, "train", TaskSpec(5, 1, 2), seed=0)
    large = np.isin(sampler.plans(0, 800).classes[:, 0], store.sources["large"]).mean()
    assert abs(large - 0.75) < 0.05


def test_episode_i_is_the_same_however_episodes_are_batched():
    store = two_sources()
    sampler = MixedEpisodeSampler(store, "train", TaskSpec(5, 1, 2), seed=4)
    whole = sampler.plans(0, 12)
    parts = [sampler.plans(s, 4) for s in (0, 4, 8)]
    np.testing.assert_array_equal(whole.support, np.concatenate([p.support for p in parts]))
    # and it is that source's own episode i: what its sampler alone would draw
    k = sampler.mixer.source(5)
    alone = EpisodeSampler(store.source_view(sampler.mixer.names[k]), "train", TaskSpec(5, 1, 2), 4).plans(5, 1)
    np.testing.assert_array_equal(whole.support[5], alone.support[0])
    variable = MixedVariableSampler(store, "train", seed=4)
    e = variable.episode(7)
    assert len({int(c in store.sources["large"]) for c in e.classes}) == 1
    np.testing.assert_array_equal(e.support, MixedVariableSampler(store, "train", seed=4).episode(7).support)


def test_a_source_without_the_split_is_left_out_and_the_mean_weighs_sources_alike():
    no_val = source(10, 6, 2)
    no_val.splits["train"] = np.arange(8)
    no_val.splits["val"] = np.zeros(0, dtype=np.int64)
    no_val.splits["test"] = np.arange(8, 10)
    store = combine([("a", no_val), ("b", source(20, 6, 3))])
    assert [n for n, _ in per_source(store, "val")] == ["b"]
    assert [n for n, _ in per_source(store, "test")] == ["a", "b"]
    assert per_source(source(10, 6, 0), "test")[0][0] is None  # one dataset: scored as it always was
    mean = mean_over_sources({"a": {"accuracy": 0.9, "ci95": 0.03, "episodes": 600, "ways": 5},
                              "b": {"accuracy": 0.5, "ci95": 0.04, "episodes": 100, "ways": 5}})
    assert mean["accuracy"] == pytest.approx(0.7) and mean["ci95"] == pytest.approx(0.025)
    assert mean["ways"] == 5 and mean["episodes"] == 700 and set(mean["sources"]) == {"a", "b"}


def test_ranks_and_the_per_source_table():

    ranks = _ranks([0.9, 0.8, 0.9, math.nan])
    assert ranks[:3] == [1.5, 3.0, 1.5] and math.isnan(ranks[3])

    def result(run: str, a: float, b: float) -> Result:
        return Result(run, "protonet", "a+b", "5w1s", 5, 1, (a + b) / 2, 0.01, None, None, "", 0, "completed",
                      {"sources": {"a": (a, 0.01), "b": (b, 0.02)}})

    (table,) = per_source_tables([result("r1", 0.9, 0.5), result("r2", 0.8, 0.7), result("r3", 0.7, 0.6)])
    assert table["sources"] == ["a", "b"]
    by_run = {r["run"]: r for r in table["rows"]}
    assert by_run["r1"]["average_rank"] == 2.0  # first on a, third on b
    assert by_run["r2"]["average_rank"] == 1.5  # second on a, first on b
    assert by_run["r3"]["average_rank"] == 2.5
    assert [r["run"] for r in table["rows"]] == ["r2", "r1", "r3"]


def glyph_folder(root, classes: int = 12, per_class: int = 8, size: int = 16, seed: int = 0):
    """An image_folder of `classes` folders of PNGs: each class a random bright pattern, its images noisy copies."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        pattern = rng.random((size, size)) > 0.7
        (root / f"class{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            noise = rng.random((size, size)) < 0.05
            Image.fromarray(((pattern ^ noise) * 255).astype(np.uint8), "L").save(root / f"class{c:02d}" / f"{i}.png")
    return root


@pytest.mark.e2e
def test_train_on_two_sources_then_test_per_source_cross_domain_and_report(tmp_path):
    folder = glyph_folder(tmp_path / "glyphs", classes=50)  # 35 train, 5 val, 10 test classes
    digits = glyph_folder(tmp_path / "held_out", classes=6, seed=1)
    common = ["dataset=multi", "dataset.sources=[synthetic,image_folder]", f"dataset.roots.image_folder={folder}",
              "queries=3", "sampler.train_queries=3", "debug=smoke", "test.episodes=6", "val.episodes=4"]
    r = cli("metalearn-train", "method=protonet", *common, "sampler=variable", "run_dir=run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    for tag in ("5w1s", "variable"):
        t = s["test"][tag]
        assert set(t["sources"]) == {"synthetic", "image_folder"}
        assert t["accuracy"] == pytest.approx(np.mean([v["accuracy"] for v in t["sources"].values()]))
        digests = {v["episodes_digest"] for v in t["sources"].values()}
        assert len(digests) == 2  # each source's own episodes, each with its own digest
        for name in t["sources"]:
            saved = json.loads((tmp_path / "run" / "eval" / f"test_{tag}@{name}.json").read_text())
            assert saved["episodes_digest"] == t["sources"][name]["episodes_digest"]
    vals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
            if '"val"' in line]
    assert {"accuracy_synthetic", "accuracy_image_folder"} <= set(vals[-1])

    e = cli("metalearn-eval", "run=run", "episodes=5", cwd=tmp_path)
    assert e.returncode == 0, e.stderr[-2000:]
    assert "on synthetic (a source of synthetic+image_folder)" in e.stdout and "mean over 2 sources" in e.stdout
    x = cli("metalearn-eval", "run=run", "episodes=5", "dataset=image_folder", f"dataset_root={digits}", cwd=tmp_path)
    assert x.returncode == 0, x.stderr[-2000:]
    assert "image_folder-held_out (cross-domain: trained on synthetic+image_folder)" in x.stdout
    crossed = list((tmp_path / "run" / "eval").glob("cross-image_folder-held_out_test_5w1s_*.json"))
    assert len(crossed) == 1
    assert json.loads(crossed[0].read_text())["episodes"] == 5  # all 6 classes are test classes: 5-way episodes

    rep = cli("metalearn-report", "run", "--out", "report", cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr[-2000:]
    md = (tmp_path / "report" / "leaderboard.md").read_text()
    assert "## Per source: synthetic+image_folder, 5w1s" in md and "| average rank |" in md
    assert "## synthetic+image_folder -> image_folder-held_out (cross-domain)" in md


def test_an_unknown_or_repeated_source_is_one_line_naming_the_key():
    from metalearn.config.datasets import MultiSourceConfig
    from metalearn.data.multi_source import source_stores

    with pytest.raises(MetalearnError, match="dataset.sources lists nosuch, which is not a dataset option"):
        source_stores(MultiSourceConfig(sources=["synthetic", "nosuch"]))
    with pytest.raises(MetalearnError, match="lists synthetic twice"):
        source_stores(MultiSourceConfig(sources=["synthetic", "synthetic"]))
