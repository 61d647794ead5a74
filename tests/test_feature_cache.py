"""The feature cache (metalearn/engine/feature_cache.py, metalearn-eval feature_cache=true): cached and uncached
evaluation give the same per-episode results, a second evaluation never runs the encoder, and anything that
changes a code is another cache entry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_method

from metalearn.config import EvalConfig, TTAConfig
from metalearn.data.store import ImageStore
from metalearn.engine.evaluate import evaluate, evaluate_variable
from metalearn.engine.feature_cache import FeatureCache
from metalearn.errors import MetalearnError
from metalearn.eval import feature_cache


def method(name: str = "protonet", seed: int = 0):
    return tiny_method(name, seed=seed)


def store(seed: int = 0) -> ImageStore:
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randint(0, 256, (12, 1, 16, 16), dtype=torch.uint8, generator=g)
    noise = torch.randint(-20, 20, (12 * 10, 1, 16, 16), generator=g)
    images = (patterns.repeat_interleave(10, 0).int() + noise).clamp(0, 255).to(torch.uint8)
    return ImageStore.from_classes(images, [10] * 12, [f"c{i}" for i in range(12)],
                                   {"train": np.zeros(0, dtype=np.int64), "test": np.arange(12)})


PROTOCOL = EvalConfig(split="test", ways=5, shots=1, queries=5, episodes=40)


def test_cached_evaluation_is_the_uncached_one_and_reads_codes_not_images(tmp_path, monkeypatch):
    m, s = method(), store()
    plain = evaluate(m, s, PROTOCOL, torch.device("cpu"))
    cold = FeatureCache(tmp_path, m, s, "test")
    assert not cold.hit
    first = evaluate(m, s, PROTOCOL, torch.device("cpu"), cache=cold)
    np.testing.assert_array_equal(first.per_episode, plain.per_episode)
    warm = FeatureCache(tmp_path, m, s, "test")
    assert warm.hit and warm.path == cold.path
    monkeypatch.setattr(m, "encode", lambda x: (_ for _ in ()).throw(AssertionError("the encoder ran")))
    again = evaluate(m, s, PROTOCOL, torch.device("cpu"), cache=warm)
    np.testing.assert_array_equal(again.per_episode, plain.per_episode)
    variable = evaluate_variable(m, s, "test", 5, 0, torch.device("cpu"), cache=warm)  # variable episodes read it too
    assert len(variable.per_episode) == 5


def test_other_weights_images_or_dtype_are_another_entry(tmp_path):
    m, s = method(), store()
    key = FeatureCache(tmp_path, m, s, "test").path
    assert FeatureCache(tmp_path, method(seed=1), s, "test").path != key
    assert FeatureCache(tmp_path, m, store(seed=1), "test").path != key
    half = FeatureCache(tmp_path, m, s, "test", "float16")
    assert half.path != key
    evaluate(m, s, PROTOCOL, torch.device("cpu"), cache=half)
    evaluate(m, s, PROTOCOL, torch.device("cpu"), cache=FeatureCache(tmp_path, m, s, "test"))
    assert np.load(half.path).dtype == np.float16 and np.load(key).dtype == np.float32
    assert half.path.stat().st_size < 0.6 * key.stat().st_size


def test_refused_where_a_code_is_not_fixed(tmp_path):
    s = store()
    config = {"dataset": {"cache_dir": str(tmp_path)}}
    cfg = EvalConfig(feature_cache=True)
    with pytest.raises(MetalearnError, match="adapts to each task"):
        feature_cache(cfg, [(method("maml"), s, {"config": config})], None)
    with pytest.raises(MetalearnError, match="test-time copies"):
        feature_cache(EvalConfig(feature_cache=True, tta=TTAConfig(copies=4)), [(method(), s, {"config": config})], None)
    with pytest.raises(MetalearnError, match="ensemble"):
        feature_cache(cfg, [(method(), s, {"config": config})] * 2, None)
    assert feature_cache(cfg, [(method(), s, {"config": config})], None).path.parent == tmp_path / "features"


def test_simpleshot_training_reads_the_frozen_encoders_codes_from_the_cache(tmp_path, monkeypatch):
    """feature_cache=true in training: SimpleShot's base mean from cached codes is the one from images, and a second
    run reads the cache instead of running the encoder."""
    import json

    from conftest import run_main

    from metalearn.engine.checkpoint import load_checkpoint

    monkeypatch.setenv("METALEARN_CACHE", str(tmp_path / "cache"))
    common = ["method=simpleshot", "debug=smoke", "test.episodes=3", "val.every=0"]
    sums = []
    for name, cached in (("plain", "false"), ("cold", "true"), ("warm", "true")):
        code, text = run_main("metalearn-train", *common, f"feature_cache={cached}", f"run_dir={name}", cwd=tmp_path)
        assert code == 0, text
        assert ("reading the training split's codes" in text) == (name == "warm"), text
        sums.append(load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["method"]["feature_sum"])
        assert json.loads((tmp_path / name / "summary.json").read_text())["status"] == "completed"
    assert torch.equal(sums[0], sums[1]) and torch.equal(sums[0], sums[2])
