"""The methods of issue 38, each checked against a hand computation or an independent formulation."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from metalearn.backbones import Conv4
from metalearn.methods.meta_baseline import MetaBaseline, centroid_cosine_logits
from metalearn.methods.simpleshot import SimpleShot, nearest_centroid_logits, transform
from metalearn.tasks.sources import LabelledBatch


def test_meta_baseline_is_temperature_times_cosine_to_centroids():
    zs = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]])  # class 0: (1,0), (3,0) -> centroid (2,0)
    labels = torch.tensor([[0, 0, 1]])
    zq = torch.tensor([[[1.0, 1.0]]])
    tau = torch.tensor(10.0, requires_grad=True)
    logits = centroid_cosine_logits(zs, labels, zq, 2, tau)
    c = 1 / 2 ** 0.5  # cos((1,1), (1,0)) = cos((1,1), (0,1))
    torch.testing.assert_close(logits, torch.tensor([[[10 * c, 10 * c]]]))
    logits[0, 0, 0].backward()
    torch.testing.assert_close(tau.grad, torch.tensor(c))  # the temperature learns
    m = MetaBaseline(Conv4(1, 8))
    assert m.temperature.requires_grad and float(m.temperature.detach()) == 10.0
    assert not MetaBaseline(Conv4(1, 8), learn_temperature=False).temperature.requires_grad


def test_simpleshot_transforms_and_nearest_centroid_by_hand():
    z = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    mean = torch.tensor([1.0, 0.0])
    torch.testing.assert_close(transform(z, "un", mean), z)
    torch.testing.assert_close(transform(z, "l2n", mean), torch.tensor([[0.6, 0.8], [c := 2 ** -0.5, c]]))
    torch.testing.assert_close(transform(z, "cl2n", mean), torch.tensor([[5 ** -0.5, 2 * 5 ** -0.5], [0.0, 1.0]]))
    zs = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]]])  # centroids (1, 0) and (0, 4)
    logits = nearest_centroid_logits(zs, torch.tensor([[0, 0, 1]]), torch.tensor([[[1.0, 1.0]]]), 2)
    torch.testing.assert_close(logits, torch.tensor([[[-1.0, -10.0]]]))


def test_simpleshot_measures_the_exact_base_mean_without_changing_a_weight():
    torch.manual_seed(0)
    m = SimpleShot(Conv4(1, 8), 8, num_classes=4)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    batches = [LabelledBatch(torch.randn(6, 1, 28, 28), torch.arange(6) % 4, 4) for _ in range(3)]
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    m.train()
    for b in batches:
        stats = m.train_step(b, opt)
    assert m.training and set(stats) == {"loss", "accuracy"}
    m.eval()
    with torch.no_grad():
        expected = torch.cat([m.backbone(b.images) for b in batches]).mean(0)
    torch.testing.assert_close(m.base_mean, expected)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("feature_"))
    assert m.learns() and not any(p.requires_grad for p in m.parameters())
    zs, zq = torch.randn(1, 4, 8), torch.randn(1, 3, 8)
    labels = torch.tensor([[0, 1, 2, 3]])
    cl2n = lambda x: nn.functional.normalize(x - expected, dim=-1)  # noqa: E731
    torch.testing.assert_close(m.head(zs, labels, zq, 4), -torch.cdist(cl2n(zq), cl2n(zs)).pow(2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["meta_baseline", "simpleshot"])
@pytest.mark.e2e
def test_smoke_train_then_eval_through_the_cli(tmp_path, name):
    from conftest import smoke_train_then_eval

    e = smoke_train_then_eval(tmp_path, name, [], "ways=7")
    assert f"{name} on synthetic test 7-way 1-shot" in e.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["method_config"]["name"] == name
