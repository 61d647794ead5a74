"""Matching, Relation and Siamese networks, the transfer baselines, and their training data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import predictions_with_support_shuffled
from torch import nn

from metalearn.backbones import Conv4, RelationConv4
from metalearn.config import SyntheticConfig
from metalearn.data.synthetic import build_synthetic
from metalearn.engine.evaluate import evaluate, protocol_for
from metalearn.methods.baseline import Baseline
from metalearn.methods.matching import MatchingNet
from metalearn.methods.pixel_nn import PixelNN
from metalearn.methods.protonet import ProtoNet
from metalearn.methods.relation import RelationNet
from metalearn.methods.siamese import Siamese
from metalearn.tasks.episodes import EpisodeSampler, TaskSpec, gather
from metalearn.tasks.sources import LabelledSource, PairSource


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_synthetic(SyntheticConfig(num_classes=60, images_per_class=10,
                                           cache_dir=str(tmp_path_factory.mktemp("c"))))


def episodes(store, spec=None, tasks=2, split="train", seed=0):
    return gather(store, EpisodeSampler(store, split, spec or TaskSpec(5, 2, 3), seed).plans(0, tasks))


def methods():
    torch.manual_seed(0)
    return {"protonet": ProtoNet(Conv4(1, 8)), "matching": MatchingNet(Conv4(1, 8), 8),
            "relation": RelationNet(RelationConv4(1, 8), (1, 28, 28)),
            "siamese": Siamese(Conv4(1, 8), 8), "siamese-kernel": Siamese(Conv4(1, 8), 8, rule="kernel"),
            "siamese-fc": Siamese(RelationConv4(1, 8), 200, embedding=16),
            "pixel_nn": PixelNN()}


@pytest.mark.parametrize("name", list(methods()))
def test_shuffling_the_support_set_does_not_change_predictions(store, name):
    m = methods()[name].eval()
    b = episodes(store, tasks=1)
    a, c = predictions_with_support_shuffled(m, b)
    assert a.shape == (15, 5)
    assert torch.allclose(a, c, atol=1e-5)


def embedding_methods():
    """Every EmbeddingMethod, batch-norm running statistics moved off their defaults."""
    from metalearn.methods.mann import MANN

    ms = {**methods(), "matching-fce": MatchingNet(Conv4(1, 8), 8, fce=True),
          "baseline": Baseline(Conv4(1, 8), 8, num_classes=10, finetune_steps=3),
          "mann": MANN(Conv4(1, 8), 8, ways=5, hidden=16, slots=10, width=6, heads=2)}
    gen = torch.Generator().manual_seed(3)
    for m in ms.values():
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=gen) * 0.1)
                bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=gen) + 0.5)
    return ms


@pytest.mark.parametrize("name", list(embedding_methods()))
def test_evaluation_encoding_each_distinct_image_once_matches_predict(store, name):
    """The evaluation shortcut (encode each distinct image once, then the head per episode) gives the
    per-episode accuracies of calling predict on every episode's pixels."""
    from metalearn.engine.evaluate import encode_distinct
    from metalearn.tasks.episodes import episode_labels

    torch.manual_seed(0)
    m = embedding_methods()[name].eval()
    assert m.encodes_each_image_alone()
    plans = EpisodeSampler(store, "test", TaskSpec(5, 1, 3), 4).plans(0, 6)
    b = gather(store, plans)
    codes, rows = encode_distinct(m, store, plans.image_ids(), torch.device("cpu"))
    assert codes.shape[0] == len(np.unique(plans.image_ids())) < plans.image_ids().size
    z = codes[rows]
    with torch.no_grad():
        torch.manual_seed(1)
        direct = m.predict(b.support, b.support_labels, b.query, b.ways)
        torch.manual_seed(1)
        cached = m.head(z[:, :5], episode_labels(6, 5, 1), z[:, 5:], 5)
    assert torch.allclose(direct, cached, atol=1e-4, rtol=1e-4)
    r = evaluate(m, store, protocol_for("test", TaskSpec(5, 1, 3), 6, 4), torch.device("cpu"), batch=4)
    assert np.array_equal(r.per_episode, (direct.argmax(-1) == b.query_labels).float().mean(1).numpy())


def test_batch_statistics_turn_the_evaluation_shortcut_off():
    assert not ProtoNet(Conv4(1, 8)).train().encodes_each_image_alone()  # batch statistics in training
    assert not ProtoNet(Conv4(1, 8, bn_running_stats=False)).eval().encodes_each_image_alone()  # transductive
    assert ProtoNet(Conv4(1, 8)).eval().encodes_each_image_alone()


def test_matching_probabilities_are_attention_over_support_labels(store):
    m = methods()["matching"].eval()
    b = episodes(store, tasks=1)
    with torch.no_grad():
        logits = m.predict(b.support[0], b.support_labels[0], b.query[0], 5)
        zs, zq = m.backbone(b.support[0]), m.backbone(b.query[0])
    cos = nn.functional.cosine_similarity(zq[:, None], zs[None], dim=-1)
    expected = torch.softmax(10.0 * cos, -1) @ nn.functional.one_hot(b.support_labels[0], 5).float()
    assert torch.allclose(logits.exp(), expected, atol=1e-5)
    assert torch.allclose(logits.exp().sum(-1), torch.ones(15), atol=1e-5)


def test_matching_fce_reads_the_whole_support_set_and_trains(store):
    torch.manual_seed(0)
    m = MatchingNet(Conv4(1, 8), 8, fce=True, fce_steps=3)
    b = episodes(store, tasks=2)
    loss, _ = m.loss(b)
    loss.backward()
    for module in (m.support_encoder, m.query_encoder):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    m.eval()
    with torch.no_grad():  # full context: changing one support image moves every query's prediction
        a = m.predict(b.support[0], b.support_labels[0], b.query[0], 5)
        other = b.support[0].clone()
        other[0] = other[0].flip(-1)
        c = m.predict(other, b.support_labels[0], b.query[0], 5)
    assert not torch.allclose(a, c)


def test_relation_sums_class_features_and_regresses_scores_onto_one_hot(store):
    m = methods()["relation"].eval()
    b = episodes(store, tasks=1)
    with torch.no_grad():
        logits = m.predict(b.support, b.support_labels, b.query, 5)[0]
        zs, zq = m.backbone.feature_maps(b.support[0]), m.backbone.feature_maps(b.query[0])
        cls = torch.stack([zs[b.support_labels[0] == k].sum(0) for k in range(5)])
        pairs = torch.cat([cls[None].expand(15, -1, -1, -1, -1), zq[:, None].expand(-1, 5, -1, -1, -1)], 2)
        expected = m.relation(pairs.flatten(0, 1)).reshape(15, 5)
        loss, _ = m.loss(b)
    assert torch.allclose(logits, expected, atol=1e-5)
    target = nn.functional.one_hot(b.query_labels[0], 5).float()
    assert torch.allclose(loss, nn.functional.mse_loss(torch.sigmoid(logits), target), atol=1e-6)


def test_siamese_max_rule_picks_the_best_matching_support_example():
    m = Siamese(nn.Flatten(), 2).eval()
    with torch.no_grad():
        m.distance.weight.fill_(-1.0)
        m.distance.bias.fill_(3.0)
    support = torch.tensor([[0.0, 0.0], [5.0, 5.0], [1.0, 0.0], [9.0, 9.0]]).reshape(4, 1, 1, 2)
    labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[1.2, 0.1], [8.0, 8.5], [4.0, 4.5]]).reshape(3, 1, 1, 2)
    with torch.no_grad():
        logits = m.predict(support, labels, query, 2)
    assert logits.argmax(-1).tolist() == [1, 0, 1]
    assert torch.allclose(logits[0, 1], 3.0 - torch.tensor(0.2 + 0.1))


def test_pair_source_is_balanced_from_training_classes_only_and_reproducible(store):
    src = PairSource(store, seed=3, pairs=64)
    train = set(store.splits["train"].tolist())
    image_class = np.repeat(np.arange(store.num_classes), store.class_count)
    for step in range(20):
        index, classes, same = src.plans(step)
        assert same.sum() == 32 and same.shape == (64,)
        assert (image_class[index] == classes).all()  # each image really is of the class named
        assert set(classes.ravel().tolist()) <= train
        s = same.astype(bool)
        assert (classes[s, 0] == classes[s, 1]).all() and (index[s, 0] != index[s, 1]).all()
        assert (classes[~s, 0] != classes[~s, 1]).all()
    a, b = src.plans(7), PairSource(store, seed=3, pairs=64).plans(7)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    batch = src.batch(0, "cpu")
    assert batch.first.shape == (64, 1, 28, 28) and batch.same.dtype == torch.float32


def test_pair_source_hard_negatives_pair_classes_of_one_group(store):
    from metalearn.data.store import ImageStore
    groups = ["A"] * 4 + ["B"] * 3 + ["C"]  # C has no group-mate: its negatives stay random
    names = [f"{g}/char{i}" for i, g in enumerate(groups)] + ["A/held_out"]
    grouped = ImageStore.from_classes(torch.zeros(27, 1, 4, 4, dtype=torch.uint8), [3] * 9, names,
                                      {"train": np.arange(8), "test": np.array([8])})
    group = np.array([n.split("/")[0] for n in names])
    plain, hard = PairSource(grouped, seed=1, pairs=400), PairSource(grouped, seed=1, pairs=400, hard_negatives=1.0)
    same_group = {}
    for name, src in (("plain", plain), ("hard", hard)):
        _, classes, same = src.plans(0)
        neg = classes[same == 0]
        assert (neg[:, 0] != neg[:, 1]).all() and 8 not in neg  # still different classes, training split only
        mates = group[neg[:, 0]] != "C"
        same_group[name] = (group[neg[mates, 0]] == group[neg[mates, 1]]).mean()
        assert (same.sum(), len(same)) == (200, 400)
    assert same_group["hard"] == 1.0 and same_group["plain"] < 0.6
    # every group-mate is drawn: class 0's hard negatives cover classes 1-3
    _, classes, same = hard.plans(1)
    assert set(classes[(same == 0) & (classes[:, 0] == 0), 1].tolist()) == {1, 2, 3}
    # hard_negatives=0 keeps the pairs the sampler always gave
    assert all((x == y).all() for x, y in zip(plain.plans(3), PairSource(grouped, seed=1, pairs=400,
                                                                           hard_negatives=0.0).plans(3), strict=True))
    with pytest.raises(Exception, match="share a group"):
        PairSource(store, seed=0, pairs=8, hard_negatives=0.5)  # synthetic class names have no groups
    with pytest.raises(Exception, match=r"in \[0, 1\]"):
        PairSource(grouped, seed=0, pairs=8, hard_negatives=1.5)


def test_pair_source_rejects_an_odd_pair_count(store):
    with pytest.raises(Exception, match="even number"):
        PairSource(store, seed=0, pairs=5)


def test_baseline_pretraining_never_sees_a_validation_or_test_class(store):
    src = LabelledSource(store, seed=0, batch_size=100)
    train = store.splits["train"]
    image_class = np.repeat(np.arange(store.num_classes), store.class_count)
    held_out = set(store.splits["val"].tolist()) | set(store.splits["test"].tolist())
    seen = set()
    for step in range(50):
        index, labels = src.plans(step)
        assert len(set(index.tolist())) == 100  # distinct within a batch
        assert not set(image_class[index].tolist()) & held_out
        assert (train[labels] == image_class[index]).all()  # the label is the image's class among train classes
        seen |= set(image_class[index].tolist())
    assert seen == set(train.tolist())
    assert src.num_classes == len(train)


def test_baseline_heads_fit_each_task_independently_of_its_batch(store):
    torch.manual_seed(0)
    m = Baseline(Conv4(1, 64), 64, num_classes=len(store.splits["train"]), cosine=True).eval()
    b = episodes(store, TaskSpec(5, 1, 5), tasks=3, split="test")
    together = m.predict(b.support, b.support_labels, b.query, 5)
    alone = m.predict(b.support[1], b.support_labels[1], b.query[1], 5)
    assert torch.allclose(together[1], alone, atol=1e-5)
    zs = m.backbone(b.support.flatten(0, 1)).reshape(3, 5, -1).detach()
    weight, _ = m.fit_heads(zs, b.support_labels, 5)  # the new heads separate their own support set
    from metalearn.methods.baseline import head_logits

    assert (head_logits(zs, weight, None, True).argmax(-1) == b.support_labels).all()


@pytest.mark.parametrize("cosine", [False, True], ids=["baseline", "baselinepp"])
def test_baseline_pretraining_learns_the_training_classes(store, cosine):
    torch.manual_seed(0)
    src = LabelledSource(store, seed=0, batch_size=64)
    m = Baseline(Conv4(1, 16), 16, num_classes=src.num_classes, cosine=cosine)
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    first = [m.train_step(src.batch(s, "cpu"), opt)["loss"] for s in range(5)]
    for s in range(5, 80):
        last = m.train_step(src.batch(s, "cpu"), opt)
    assert last["loss"] < np.mean(first) - 0.5  # (a cosine head at scale 2 cannot go far below 0.5)
    assert evaluate(m, store, protocol_for("val", TaskSpec(5, 1, 5), 40, 1), torch.device("cpu")).accuracy > 0.5


@pytest.mark.parametrize("name,extra", [("matching", []), ("matching", ["method.fce=true"]), ("relation", []),
                                        ("siamese", []),
                                        ("siamese", ["method.embedding=32", "method.backbone.name=conv4_relation"]),
                                        ("baseline", []), ("baselinepp", []), ("pixel_nn", []), ("meta_baseline", []),
                                        ("simpleshot", []), ("metaoptnet", []), ("metaoptnet", ["method.head=ridge"]),
                                        ("tim", ["method.iterations=50"]), ("feat", [])],
                         ids=["matching", "matching-fce", "relation", "siamese", "siamese-fc", "baseline", "baselinepp",
                              "pixel_nn", "meta_baseline", "simpleshot", "metaoptnet-svm", "metaoptnet-ridge", "tim",
                              "feat"])
@pytest.mark.e2e
def test_smoke_train_then_eval_through_the_cli(tmp_path, name, extra):
    from conftest import smoke_train_then_eval

    e = smoke_train_then_eval(tmp_path, name, extra, "ways=7")
    assert f"{name} on synthetic test 7-way 1-shot" in e.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["method_config"]["name"] == name
    if name != "pixel_nn":
        lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        unit = {"siamese": "pairs", "baseline": "images", "baselinepp": "images", "simpleshot": "images",
                "tim": "images"}.get(name, "episodes")
        assert any(f"{unit}_per_s" in x for x in lines if x["kind"] == "train")
