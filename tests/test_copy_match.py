"""tta.match=chamfer: copies matched to copies, checked against the formula written out pair by pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metalearn.config import SyntheticConfig, TTAConfig
from metalearn.data.synthetic import build_synthetic
from metalearn.engine.evaluate import encode_distinct, evaluate, protocol_for
from metalearn.errors import MetalearnError
from metalearn.readouts.chamfer import chamfer_logits, chamfer_similarity
from metalearn.tasks.episodes import TaskSpec


def loop_chamfer(a: torch.Tensor, b: torch.Tensor) -> float:
    """One pair of images' copies [K, D] (unit length), by the definition: each copy's best cosine on the other side,
    averaged over the copies, both ways, halved."""
    one_way = [max(float(x @ y) for y in b) for x in a]
    other_way = [max(float(y @ x) for x in a) for y in b]
    return 0.5 * (sum(one_way) / len(a) + sum(other_way) / len(b))


def test_chamfer_similarity_is_the_formula_pair_by_pair():
    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(3, 5, 7), dim=-1), F.normalize(torch.randn(4, 5, 7), dim=-1)
    got = chamfer_similarity(a, b)
    want = torch.tensor([[loop_chamfer(x, y) for y in b] for x in a])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert torch.allclose(chamfer_similarity(a, a).diagonal(), torch.ones(3))  # a set matches itself exactly


def test_chamfer_logits_with_one_copy_are_the_scaled_cosine_and_average_a_class_s_shots():
    torch.manual_seed(1)
    zs, zq = torch.randn(2, 6, 1, 9), torch.randn(2, 4, 1, 9)  # 3-way 2-shot, one copy each
    labels = torch.tensor([[0, 0, 1, 1, 2, 2], [2, 1, 0, 2, 1, 0]])
    logits = chamfer_logits(zs, labels, zq, 3, scale=10.0)
    cos = F.normalize(zq[:, :, 0], dim=-1) @ F.normalize(zs[:, :, 0], dim=-1).transpose(1, 2)  # [T, Q, S]
    want = torch.stack([torch.stack([cos[t][:, labels[t] == c].mean(1) for c in range(3)], -1) for t in range(2)])
    torch.testing.assert_close(logits, 10.0 * want)
    # several copies: the class score is the mean over its shots of the pairwise Chamfer similarity
    zs, zq = torch.randn(2, 6, 5, 9), torch.randn(2, 4, 5, 9)
    logits = chamfer_logits(zs, labels, zq, 3, scale=1.0)
    ns, nq = F.normalize(zs, dim=-1), F.normalize(zq, dim=-1)
    t, q, c = 1, 2, 0
    shots = [loop_chamfer(nq[t, q], ns[t, s]) for s in range(6) if labels[t, s] == c]
    assert float(logits[t, q, c]) == pytest.approx(sum(shots) / len(shots), abs=1e-6)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_synthetic(SyntheticConfig(num_classes=60, images_per_class=10,
                                           cache_dir=str(tmp_path_factory.mktemp("c"))))


def test_kept_copies_are_the_copies_the_mean_averages(store):
    """readout=chamfer keeps each copy's code; their mean is the averaged copies' code (the same copies from tta.seed)."""
    from metalearn.backbones import Conv4
    from metalearn.methods.meta_baseline import MetaBaseline

    torch.manual_seed(0)
    method = MetaBaseline(Conv4(1, 8)).eval()
    ids = np.arange(12)
    tta = TTAConfig(copies=4, elastic_alpha=16)
    mean, _ = encode_distinct(method, store, ids, torch.device("cpu"), tta)
    kept, _ = encode_distinct(method, store, ids, torch.device("cpu"), tta, keep=True)
    assert kept.shape == (12, 4, *mean.shape[1:])
    torch.testing.assert_close(kept.mean(1), mean)
    protocol = protocol_for("test", TaskSpec(5, 1, 3), 20, 2, tta=TTAConfig(copies=4), readout="chamfer")
    a = evaluate(method, store, protocol, torch.device("cpu"))
    assert np.array_equal(a.per_episode, evaluate(method, store, protocol, torch.device("cpu")).per_episode)
    assert a.summary()["tta"]["match"] == "chamfer" and not a.transductive


def test_chamfer_is_refused_for_a_head_that_is_not_cosine(store):
    from metalearn.backbones import Conv4
    from metalearn.methods.protonet import ProtoNet

    with pytest.raises(MetalearnError, match="readout=chamfer compares copies by cosine"):
        evaluate(ProtoNet(Conv4(1, 8)), store, protocol_for("test", TaskSpec(5, 1, 3), 4, 2, tta=TTAConfig(copies=4),
                                                            readout="chamfer"), torch.device("cpu"))


def test_chamfer_is_refused_without_copies(store):
    """readout=chamfer matches each image's copies: with tta.copies=1 there are none, so it is refused, not run."""
    from metalearn.backbones import Conv4
    from metalearn.methods.meta_baseline import MetaBaseline

    with pytest.raises(MetalearnError, match="readout=chamfer matches each image's test-time copies, and tta.copies=1"):
        evaluate(MetaBaseline(Conv4(1, 8)), store, protocol_for("test", TaskSpec(5, 1, 3), 4, 2, readout="chamfer"),
                 torch.device("cpu"))
