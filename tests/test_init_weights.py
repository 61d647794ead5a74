"""init.run: a run starts from another run's weights; only same-named, same-shaped tensors are copied,
and every mismatch is a clear error rather than a silent partial load."""

from __future__ import annotations

import pytest
import torch
from conftest import compose

from metalearn.engine.checkpoint import save_checkpoint
from metalearn.engine.init_weights import initialize_from, parse_rename
from metalearn.errors import MetalearnError
from metalearn.methods import build_method


def method(name: str, *overrides: str, train_classes: int = 30):
    cfg = compose(f"method={name}", *overrides)
    return build_method(cfg.method, (1, 28, 28), 5, train_classes=train_classes)


@pytest.fixture
def pretrained(tmp_path):
    """A Baseline++ checkpoint in a run folder's layout, with weights unlike any fresh initialisation."""
    torch.manual_seed(1)
    src = method("baselinepp")
    with torch.no_grad():
        for t in src.state_dict().values():
            if t.is_floating_point():
                t.normal_()
    save_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", {"method": src.state_dict()})
    return tmp_path / "run", src.state_dict()


def test_backbone_of_a_pretrained_run_is_copied_and_the_rest_stays_fresh(pretrained):
    run, src = pretrained
    dst = method("relation", "method.backbone.name=conv4")
    fresh_relation = {k: v.clone() for k, v in dst.state_dict().items() if k.startswith("relation.")}
    report = initialize_from(dst, run, "best", [])  # no best.pt: falls back to last.pt
    state = dst.state_dict()
    shared = [k for k in src if k.startswith("backbone.")]
    assert report["tensors"] == len(shared) and report["from"].endswith("last.pt")
    for k in shared:
        assert torch.equal(state[k], src[k]), k
    for k, v in fresh_relation.items():
        assert torch.equal(state[k], v), k
    assert report["unused"] == ["weight"]  # the pre-training head: this method has none
    assert set(report["fresh"]) == set(fresh_relation)


def test_only_limits_the_copy_to_the_named_prefixes(pretrained):
    run, src = pretrained
    dst = method("baselinepp")
    head = dst.state_dict()["weight"].clone()
    report = initialize_from(dst, run / "checkpoints" / "last.pt", only=["backbone"])
    assert torch.equal(dst.state_dict()["weight"], head)
    assert torch.equal(dst.state_dict()["backbone.features.0.weight"], src["backbone.features.0.weight"])
    assert report["unused"] == ["weight"]


def test_rename_puts_a_pretrained_backbone_into_another_methods_encoder(pretrained):
    run, src = pretrained
    dst = method("mann", "method.encoder=conv")
    controller = dst.state_dict()["controller.weight_ih"].clone()
    report = initialize_from(dst, run, only=["backbone"], rename=parse_rename(["backbone:encoder"]))
    state = dst.state_dict()
    backbone = [k for k in src if k.startswith("backbone.")]
    assert report["tensors"] == len(backbone) and report["unused"] == ["weight"]
    for k in backbone:
        assert torch.equal(state["encoder" + k[len("backbone"):]], src[k]), k
    assert torch.equal(state["controller.weight_ih"], controller)
    with pytest.raises(MetalearnError, match="no tensor of .* is named 'trunk'"):
        initialize_from(dst, run, rename={"trunk": "encoder"})


@pytest.mark.parametrize("make,only,phrases", [
    (lambda: method("matching", "method.backbone.width=32"), [], ["differ in shape", "(64, 1, 3, 3) vs (32, 1, 3, 3)"]),
    (lambda: method("baselinepp", train_classes=31), [], ["weight (30, 64) vs (31, 64)", "init.only"]),
    (lambda: method("matching"), ["head"], ["no tensor", "'head'", "backbone, weight"]),
    (lambda: method("mann"), [], ["share no tensor names", "init.rename=[backbone:encoder]"]),
])
def test_mismatches_are_named(pretrained, make, only, phrases):
    run, _ = pretrained
    with pytest.raises(MetalearnError) as e:
        initialize_from(make(), run, only=only)
    for p in phrases:
        assert p in str(e.value), str(e.value)


def test_a_missing_source_says_what_to_give(tmp_path):
    with pytest.raises(MetalearnError, match="does not exist; give a finished run's folder"):
        initialize_from(method("matching"), tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetalearnError, match="holds no checkpoint"):
        initialize_from(method("matching"), tmp_path / "empty")


def test_rename_pairs_are_checked():
    assert parse_rename(["backbone:encoder", "a.b:c"]) == {"backbone": "encoder", "a.b": "c"}
    for bad in (["backbone"], ["backbone:"], ["a:b:c"]):
        with pytest.raises(MetalearnError, match="source:target prefix pairs"):
            parse_rename(bad)
