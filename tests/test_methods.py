"""ProtoNet and the pixel-space floor behind the shared method interface."""

from __future__ import annotations

import pytest
import torch
from conftest import predictions_with_support_shuffled

from metalearn.backbones import Conv4, RelationConv4
from metalearn.config import SyntheticConfig
from metalearn.data.synthetic import build_synthetic
from metalearn.engine.evaluate import evaluate, protocol_for
from metalearn.methods.pixel_nn import PixelNN
from metalearn.methods.protonet import ProtoNet
from metalearn.tasks.episodes import EpisodeSampler, TaskSpec, gather


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_synthetic(SyntheticConfig(num_classes=60, images_per_class=10,
                                           cache_dir=str(tmp_path_factory.mktemp("c"))))


def batch(store, spec=None, tasks=2, seed=0):
    return gather(store, EpisodeSampler(store, "train", spec or TaskSpec(5, 2, 3), seed).plans(0, tasks))


@pytest.mark.parametrize("pool,dim", [("max", 16), ("stride", 16)])
def test_conv4_shapes(pool, dim):
    assert Conv4(1, 16, pool)(torch.randn(3, 1, 28, 28)).shape == (3, dim)


def test_channels_last_gives_the_same_embedding():
    torch.manual_seed(0)
    a = Conv4(1, 8).eval()
    b = Conv4(1, 8, channels_last=True).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(a(x), b(x), atol=1e-5)



@pytest.mark.parametrize("make", [lambda: Conv4(1, 8, "stride", channels_last=True),
                                  lambda: RelationConv4(1, 8, channels_last=True)])
def test_channels_last_holds_after_a_one_channel_input(make):
    """A 1-channel image looks NCHW to the first convolution; every later activation must still be
    channels_last, or the backward passes mix layouts (ReLU's backward then runs ~50x slower)."""
    model = make().to(memory_format=torch.channels_last)
    seen = []
    for m in model.modules():
        if isinstance(m, (torch.nn.ReLU, torch.nn.BatchNorm2d)):
            m.register_forward_hook(lambda mod, inp, out: seen.append(
                inp[0].is_contiguous(memory_format=torch.channels_last) and not inp[0].is_contiguous()))
    # adapted weights (as in MAML's inner loop) come out in the default layout
    params = {k: v.clone(memory_format=torch.contiguous_format) for k, v in model.named_parameters()}
    torch.func.functional_call(model, params, (torch.randn(4, 1, 28, 28),)).sum().backward()
    assert len(seen) == 8 and all(seen)

def test_protonet_logits_are_negative_squared_distances_to_class_means(store):
    torch.manual_seed(0)
    m = ProtoNet(Conv4(1, 8)).eval()
    b = batch(store)
    with torch.no_grad():
        logits = m.predict(b.support, b.support_labels, b.query, b.ways)
        zs, zq = m.backbone(b.support[0]), m.backbone(b.query[0])
    protos = torch.stack([zs[b.support_labels[0] == k].mean(0) for k in range(5)])
    expected = -((zq[:, None] - protos[None]) ** 2).sum(-1)
    assert logits.shape == (2, 15, 5)
    assert torch.allclose(logits[0], expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("method", [ProtoNet(Conv4(1, 8)), PixelNN()], ids=["protonet", "pixel_nn"])
def test_shuffling_the_support_set_does_not_change_predictions(store, method):
    method.eval()
    b = batch(store, tasks=1)
    a, c = predictions_with_support_shuffled(method, b)
    assert torch.allclose(a, c, atol=1e-4)


def test_protonet_learns(store):
    torch.manual_seed(0)
    m = ProtoNet(Conv4(1, 16))
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    sampler = EpisodeSampler(store, "train", TaskSpec(5, 1, 5), seed=0)
    before = evaluate(m, store, protocol_for("val", TaskSpec(5, 1, 5), 100, 1), torch.device("cpu"))
    for step in range(60):
        m.train_step(gather(store, sampler.plans(step * 4, 4)), opt)
    after = evaluate(m, store, protocol_for("val", TaskSpec(5, 1, 5), 100, 1), torch.device("cpu"))
    assert after.accuracy > before.accuracy + 0.05


def test_pixel_nn_picks_the_nearest_support_image():
    support = torch.tensor([[0.0], [10.0], [4.0]]).reshape(3, 1, 1, 1)
    labels = torch.tensor([0, 1, 2])
    query = torch.tensor([[1.0], [6.0], [9.0]]).reshape(3, 1, 1, 1)
    logits = PixelNN().predict(support, labels, query, 3)
    assert logits.argmax(-1).tolist() == [0, 2, 1]
