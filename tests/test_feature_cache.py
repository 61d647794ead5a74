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
        assert ("reading the train split's codes" in text) == (name == "warm"), text
        sums.append(load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["method"]["feature_sum"])
        assert json.loads((tmp_path / name / "summary.json").read_text())["status"] == "completed"
    assert torch.equal(sums[0], sums[1]) and torch.equal(sums[0], sums[2])


def test_a_frozen_encoders_episodic_training_reads_cached_codes(tmp_path, monkeypatch):
    """feature_cache=true for Meta-Baseline's stage 2 on a frozen timm encoder: the training steps, validation and the
    test read the cached codes (a warm run never runs the encoder), and the run is the uncached one: the same
    per-step losses (to float rounding: the cache encodes in other batch sizes), temperature and test results."""
    import json

    pytest.importorskip("timm")
    from conftest import run_main
    from safetensors.torch import save_file

    from metalearn.backbones.timm_backbone import TimmBackbone
    from metalearn.engine.checkpoint import load_checkpoint

    timm = pytest.importorskip("timm")
    torch.manual_seed(1)
    weights = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}, str(weights))
    monkeypatch.setenv("METALEARN_CACHE", str(tmp_path / "cache"))
    calls = []
    forward = TimmBackbone.forward
    monkeypatch.setattr(TimmBackbone, "forward", lambda self, x: calls.append(len(x)) or forward(self, x))
    common = ["method=meta_baseline", "method.backbone.name=timm", "method.backbone.model=resnet18",
              f"method.backbone.weights={weights}", "method.backbone.freeze=all", "debug=smoke", "steps=6",
              "val.every=3", "val.episodes=4", "test.episodes=6", "log_every=1"]
    runs = {}
    for name, cached in (("plain", "false"), ("cold", "true"), ("warm", "true")):
        calls.clear()
        code, text = run_main("metalearn-train", *common, f"feature_cache={cached}", f"run_dir={name}", cwd=tmp_path)
        assert code == 0, text
        assert ("reading the train split's codes" in text) == (name == "warm"), text
        folder = tmp_path / name
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        runs[name] = {"losses": [r["loss"] for r in records if r["kind"] == "train"],
                      "val": [r["accuracy"] for r in records if r["kind"] == "val"],
                      "temperature": load_checkpoint(folder / "checkpoints" / "last.pt")["method"]["log_temperature"],
                      "test": json.loads((folder / "summary.json").read_text())["test"]["5w1s"]["accuracy"],
                      "encoded": sum(calls)}
    plain = runs["plain"]
    assert len(plain["losses"]) == 6 and plain["encoded"] > 0
    for name in ("cold", "warm"):
        run = runs[name]
        np.testing.assert_allclose(run["losses"], plain["losses"], rtol=1e-4)
        assert run["val"] == plain["val"] and run["test"] == plain["test"], (name, run, plain)
        torch.testing.assert_close(run["temperature"], plain["temperature"], rtol=1e-4, atol=1e-6)
    assert runs["warm"]["encoded"] == 0  # every code from the cache: no image through the encoder


def test_training_with_a_feature_cache_is_refused_where_a_code_can_change(tmp_path):
    """A learning encoder, an adapting method or augmented steps: one line naming why, before any step."""
    from conftest import run_main

    for extra, why in ((["method=protonet"], "its encoder learns"),
                       (["method=maml"], "maml adapts its weights to each task"),
                       (["method=simpleshot", "augment.enabled=true"], "augment.enabled gives every training step new pixels")):
        code, text = run_main("metalearn-train", *extra, "debug=smoke", "feature_cache=true", "run_dir=r", cwd=tmp_path)
        assert code == 2 and why in text and "drop feature_cache=true" in text, text


@pytest.mark.parametrize("name", ["protonet", "meta_baseline", "matching", "metaoptnet", "feat", "relation", "baseline"])
def test_each_heads_training_loss_from_codes_is_its_loss_from_images(name):
    """With its encoder frozen, a method's training loss read from codes by store index is the one from the images, and
    its head still gets the gradient (what feature_cache=true relies on for every embedding method it serves)."""
    from metalearn.tasks.episodes import EpisodeBatch, episode_labels
    from metalearn.tasks.sources import LabelledBatch

    m = tiny_method(name)
    for p in m.backbone.parameters():
        p.requires_grad_(False)
    m.train()
    m.backbone.eval()  # frozen: batch norms on their running statistics
    assert m.frozen_codes_reason() is None
    g = torch.Generator().manual_seed(3)
    images = torch.randn(40, 1, 16, 16, generator=g)
    with torch.no_grad():
        table = m.encode(images)
    m.codes_of = lambda index: table[torch.as_tensor(index)]
    if name == "baseline":
        labels = torch.randint(0, 10, (12,), generator=g)
        plain = m.train_step(LabelledBatch(images[:12], labels, 10), torch.optim.SGD([m.weight], lr=0.0))
        cached = m.train_step(LabelledBatch(images[:12], labels, 10, np.arange(12)), torch.optim.SGD([m.weight], lr=0.0))
        assert plain["loss"] == pytest.approx(cached["loss"], rel=1e-5)
        return
    index = torch.randperm(40, generator=g)[:2 * 5 * 3].reshape(2, 15).numpy()  # 2 tasks, 5 ways, 1 shot, 2 queries
    x = images[torch.as_tensor(index)]
    batch = EpisodeBatch(x[:, :5], episode_labels(2, 5, 1), x[:, 5:], episode_labels(2, 5, 2), 5)
    torch.manual_seed(0)  # FEAT's set attention draws dropout in training: the same draws for both
    plain, _ = m.loss(batch)
    batch.index = index
    torch.manual_seed(0)
    cached, _ = m.loss(batch)
    torch.testing.assert_close(cached, plain, rtol=1e-5, atol=1e-6)
    if not m.learns():
        return  # ProtoNet on a frozen encoder has nothing to learn (the trainer goes straight to the test)
    cached.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters() if p.requires_grad)
