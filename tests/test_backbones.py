"""The residual backbones (metalearn/backbones/resnet.py): the papers' parameter counts, every method that
takes a backbone training and predicting with each, channels_last and bf16 autocast, DropBlock's rate."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from metalearn.backbones import build_backbone
from metalearn.backbones.resnet import DropBlock
from metalearn.config import SCHEMAS, BackboneConfig
from metalearn.methods import build_method
from metalearn.tasks.episodes import EpisodeBatch, episode_labels
from metalearn.tasks.sources import LabelledBatch, PairBatch

RESNETS = ["resnet12", "wrn28_10", "resnet18"]


def params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_are_the_papers():
    import torchvision

    assert params(build_backbone(BackboneConfig(name="resnet12"), 3)) == 12_424_320  # "12.4M" (TADAM, MetaOptNet)
    wrn = params(build_backbone(BackboneConfig(name="wrn28_10"), 3))
    assert wrn + 640 * 10 + 10 == 36_479_194  # with CIFAR-10's layer: Zagoruyko & Komodakis's 36.5M
    reference = torchvision.models.resnet18()
    assert params(build_backbone(BackboneConfig(name="resnet18"), 3)) == params(reference) - params(reference.fc)


@pytest.mark.parametrize("name", RESNETS)
def test_84px_rgb_gives_the_papers_embedding(name):
    net = build_backbone(BackboneConfig(name=name, width=8), 3).eval()
    out = net(torch.randn(2, 3, 84, 84))
    assert out.shape == (2, {"resnet12": 80, "wrn28_10": 80, "resnet18": 64}[name])  # 640 / 640 / 512 at width 64


@pytest.mark.parametrize("name", RESNETS)
def test_channels_last_and_bf16_autocast_agree_with_the_plain_forward(name):
    torch.manual_seed(0)
    plain = build_backbone(BackboneConfig(name=name, width=8), 3).eval()
    fast = build_backbone(BackboneConfig(name=name, width=8), 3, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 32, 32)
    ref = plain(x)
    torch.testing.assert_close(fast(x), ref, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = plain(x)
    assert low.dtype == torch.bfloat16 and (low.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_dropblock_drops_about_its_rate_in_blocks_and_nothing_at_test():
    torch.manual_seed(0)
    drop = DropBlock(0.1, 5)
    x = torch.ones(64, 8, 10, 10)
    y = drop(x)
    dropped = (y == 0).float().mean()
    assert 0.06 < dropped < 0.14, dropped  # about the rate (blocks overlap, so a little under it)
    assert torch.allclose(y.mean(), torch.tensor(1.0), atol=0.05)  # kept units are rescaled
    zero = (y[0, 0] == 0)
    if zero.any():  # a dropped unit has a dropped neighbour: blocks, not single units
        i, j = [int(v[0]) for v in torch.nonzero(zero, as_tuple=True)]
        assert zero[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].sum() > 1
    assert torch.equal(drop.eval()(x), x)


def method_cfg(name: str, backbone: str):
    cfg = OmegaConf.structured(SCHEMAS["method"][name])
    cfg.name, cfg.backbone.name, cfg.backbone.width = name, backbone, 4  # width 4: the matrix in seconds
    if "encoder" in cfg:
        cfg.encoder = "conv"
    return cfg


def batch_for(method, ways: int = 3):
    """A batch of what the method trains on: episodes, pairs or labelled images, 3 x 32 x 32."""
    if method.train_data == "pairs":
        return PairBatch(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), torch.tensor([1.0, 1.0, 0.0, 0.0]))
    if method.train_data == "labelled":
        return LabelledBatch(torch.randn(6, 3, 32, 32), torch.arange(6) % 5, 5)
    return EpisodeBatch(torch.randn(2, ways, 3, 32, 32), episode_labels(2, ways, 1), torch.randn(2, 2 * ways, 3, 32, 32),
                        episode_labels(2, ways, 2), ways)


BACKBONE_METHODS = ["protonet", "matching", "relation", "siamese", "baseline", "baselinepp", "meta_baseline", "simpleshot",
                    "metaoptnet", "tim", "feat", "maml",
                    "fomaml", "anil", "metasgd", "reptile", "meta_lstm", "mann"]


@pytest.mark.parametrize("backbone", RESNETS)
@pytest.mark.parametrize("name", BACKBONE_METHODS)
def test_every_method_with_a_backbone_trains_and_predicts_with_each(name, backbone):
    torch.manual_seed(0)
    method = build_method(method_cfg(name, backbone), (3, 32, 32), ways=3, train_classes=5)
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad] or list(method.parameters()))
    stats = method.train_step(batch_for(method), optimizer)
    assert torch.isfinite(torch.tensor(stats["loss"]))
    method.eval()
    b = batch_for(method) if method.train_data == "episodes" else batch_for(type("E", (), {"train_data": "episodes"}))
    grad = torch.enable_grad() if method.adapts_at_test else torch.no_grad()
    with grad:
        logits = method.predict(b.support, b.support_labels, b.query, b.ways)
    assert logits.shape == (2, 6, 3) and torch.isfinite(logits).all()


def test_resnet12_without_the_global_pool_gives_metaoptnets_16000_features():
    net = build_backbone(BackboneConfig(name="resnet12", global_pool=False), 3).eval()
    assert net(torch.randn(1, 3, 84, 84)).shape == (1, 640 * 5 * 5)


@pytest.mark.parametrize("pool", ["max", "stride"])
def test_conv4_stem_reads_twice_the_size_into_the_same_embedding(pool):
    """A stem block halves a 56-px image before Conv-4's four blocks: the 1x1 map (64-d code) Conv-4 gives
    at 28 px, from a first block of `stem` channels, and it trains (the stem's weights get gradients)."""
    plain = build_backbone(BackboneConfig(width=64, pool=pool), 1)
    stem = build_backbone(BackboneConfig(width=64, pool=pool, stem=16), 1, channels_last=True)
    assert plain(torch.randn(2, 1, 28, 28)).shape == stem(torch.randn(2, 1, 56, 56)).shape == (2, 64)
    first = stem.features[0]
    assert (first.in_channels, first.out_channels) == (1, 16) and stem.features[4 if pool == "max" else 3].in_channels == 16
    assert params(stem) - params(plain) == (9 * 16 + 16) + 2 * 16 + 9 * 64 * (16 - 1)
    stem(torch.randn(4, 1, 56, 56)).square().sum().backward()
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


def test_a_stem_on_another_backbone_is_refused_by_name():
    from metalearn.errors import MetalearnError

    with pytest.raises(MetalearnError, match="method.backbone.stem=16 adds a first block to conv4 only"):
        build_backbone(BackboneConfig(name="resnet12", stem=16), 3)
