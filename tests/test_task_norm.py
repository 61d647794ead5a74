"""Test-time batch-norm statistics of embedding methods (method.test_batch_norm: running | support | transductive)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cli, predictions_with_support_shuffled
from torch import nn

from metalearn.backbones import Conv4, RelationConv4
from metalearn.config import SyntheticConfig
from metalearn.data.synthetic import build_synthetic
from metalearn.engine.evaluate import evaluate, protocol_for
from metalearn.errors import MetalearnError
from metalearn.methods import set_test_batch_norm
from metalearn.methods.protonet import ProtoNet
from metalearn.methods.relation import RelationNet
from metalearn.methods.siamese import Siamese
from metalearn.methods.task_norm import embed_with_task_statistics
from metalearn.tasks.episodes import EpisodeSampler, TaskSpec, gather


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_synthetic(SyntheticConfig(num_classes=60, images_per_class=10,
                                           cache_dir=str(tmp_path_factory.mktemp("c"))))


class OneBN(ProtoNet):
    """conv -> batch norm -> flatten: small enough to normalise by hand."""

    def __init__(self):
        super().__init__(nn.Sequential(nn.Conv2d(1, 3, 3, stride=4), nn.BatchNorm2d(3), nn.Flatten()))
        bn = self.backbone[1]
        bn.running_mean.fill_(5.0)
        bn.running_var.fill_(9.0)  # far from any batch's statistics: a policy that ignores them shows
        nn.init.normal_(bn.weight)
        nn.init.normal_(bn.bias)


def by_hand(m: OneBN, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    conv, bn = m.backbone[0], m.backbone[1]
    return nn.functional.batch_norm(conv(x), mean, var, bn.weight, bn.bias, False, 0.0, bn.eps).flatten(1)


def stats(m: OneBN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = m.backbone[0](x)
    return h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)


def test_support_statistics_normalise_support_and_queries_with_the_support_sets_moments(store):
    torch.manual_seed(0)
    m = OneBN().eval()
    set_test_batch_norm(m, "support")
    b = gather(store, EpisodeSampler(store, "test", TaskSpec(5, 2, 3), 0).plans(0, 2))
    from metalearn.methods.protonet import prototype_logits

    with torch.no_grad():
        got = m.predict(b.support, b.support_labels, b.query, b.ways)
        for t in range(2):
            mean, var = stats(m, b.support[t])
            zs, zq = by_hand(m, b.support[t], mean, var), by_hand(m, b.query[t], mean, var)
            want = prototype_logits(zs[None], b.support_labels[t][None], zq[None], 5)[0]
            assert torch.allclose(got[t], want, atol=1e-4)
        set_test_batch_norm(m, "running")
        running = m.predict(b.support, b.support_labels, b.query, b.ways)
    assert not torch.allclose(got, running, atol=1e-2)  # the running statistics are far off: policies differ
    assert all(x.running_mean.eq(5.0).all() for x in m.modules() if isinstance(x, nn.BatchNorm2d))  # untouched


def test_transductive_statistics_take_the_support_and_all_queries_together(store):
    torch.manual_seed(0)
    m = OneBN().eval()
    b = gather(store, EpisodeSampler(store, "test", TaskSpec(5, 1, 3), 0).plans(0, 3))
    with torch.no_grad():
        zs, zq = embed_with_task_statistics(m.encode, m, "transductive", b.support, b.query)
        for t in range(3):
            everything = torch.cat([b.support[t], b.query[t]])
            want = by_hand(m, everything, *stats(m, everything))
            assert torch.allclose(torch.cat([zs[t], zq[t]]), want, atol=1e-4)


@pytest.mark.parametrize("policy", ["running", "support"])
def test_a_query_is_classified_from_the_support_set_and_itself_alone(store, policy):
    """Not transductive: replacing the other queries leaves a query's logits unchanged (and with
    transductive statistics it does not)."""
    torch.manual_seed(0)
    m = Siamese(RelationConv4(1, 8), 200, embedding=16).eval()
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
    b = gather(store, EpisodeSampler(store, "test", TaskSpec(5, 1, 4), 0).plans(0, 1))
    other = b.query.clone()
    other[0, 1:] = torch.rand_like(other[0, 1:])
    with torch.no_grad():
        for p, alone in ((policy, True), ("transductive", False)):
            set_test_batch_norm(m, p)
            a = m.predict(b.support, b.support_labels, b.query, b.ways)[0, 0]
            c = m.predict(b.support, b.support_labels, other, b.ways)[0, 0]
            assert torch.allclose(a, c, atol=1e-5) == alone, p


def test_support_statistics_keep_predictions_invariant_to_support_order(store):
    torch.manual_seed(0)
    m = ProtoNet(Conv4(1, 8)).eval()
    set_test_batch_norm(m, "support")
    b = gather(store, EpisodeSampler(store, "test", TaskSpec(5, 2, 3), 0).plans(0, 1))
    a, c = predictions_with_support_shuffled(m, b)
    assert torch.allclose(a, c, atol=1e-5)


def test_evaluation_under_task_statistics_equals_predict_on_every_episode(store):
    """Codes depend on the task, so evaluation must not take the encode-each-image-once shortcut."""
    torch.manual_seed(0)
    m = ProtoNet(Conv4(1, 8)).eval()
    assert m.encodes_each_image_alone()
    set_test_batch_norm(m, "support")
    assert not m.encodes_each_image_alone()
    plans = EpisodeSampler(store, "test", TaskSpec(5, 1, 3), 4).plans(0, 6)
    b = gather(store, plans)
    with torch.no_grad():
        direct = (m.predict(b.support, b.support_labels, b.query, b.ways).argmax(-1) == b.query_labels).float().mean(1)
    r = evaluate(m, store, protocol_for("test", TaskSpec(5, 1, 3), 6, 4), torch.device("cpu"), batch=4)
    assert torch.equal(torch.from_numpy(r.per_episode).float(), direct)
    assert r.summary()["batch_norm"] == "support"


def test_a_bad_policy_names_the_key_and_the_choices():
    with pytest.raises(MetalearnError, match=r"method.test_batch_norm='tasknorm'.*running, support, transductive"):
        set_test_batch_norm(ProtoNet(Conv4(1, 8)), "tasknorm")


@pytest.mark.e2e
def test_the_policy_is_a_config_key_and_a_metalearn_eval_override(tmp_path):
    from conftest import cli, smoke_train_then_eval

    e = smoke_train_then_eval(tmp_path, "protonet", ["method.test_batch_norm=support"], "test_batch_norm=transductive")
    assert "batch norm: transductive" in e.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method_config"]["test_batch_norm"] == "support"
    assert summary["test"]["5w1s"]["batch_norm"] == "support"
    saved = json.loads(next((tmp_path / "run" / "eval").glob("*_bn-transductive.json")).read_text())
    assert saved["batch_norm"] == "transductive"
    bad = cli("metalearn-eval", "run=run", "episodes=10", "test_batch_norm=whatever", cwd=tmp_path)
    assert bad.returncode != 0 and "test_batch_norm='whatever' is not one of: running, support, transductive" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_metalearn_eval_refuses_a_policy_for_a_method_that_fixes_it_in_training():
    from metalearn.eval import set_policy
    from metalearn.methods.maml import MAML

    with pytest.raises(MetalearnError, match=r"maml fixes its policy in training \(method.batch_norm there\)"):
        set_policy(MAML(Conv4(1, 8), 8, 5, inner_lr=0.4, inner_steps=1, inner_steps_eval=1), "maml", "support")


@pytest.mark.parametrize("policy", ["support", "transductive"])
def test_each_task_of_a_batch_gets_the_codes_it_gets_alone(store, policy):
    """A relation network (multi-dimensional codes, batch norm in its head too) under channels_last."""
    torch.manual_seed(0)
    m = RelationNet(RelationConv4(1, 8, channels_last=True), (1, 28, 28)).eval()
    set_test_batch_norm(m, policy)
    b = gather(store, EpisodeSampler(store, "test", TaskSpec(5, 1, 3), 0).plans(0, 4))
    with torch.no_grad():
        together = m.predict(b.support, b.support_labels, b.query, b.ways)
        for t in range(4):
            alone = m.predict(b.support[t], b.support_labels[t], b.query[t], b.ways)
            assert torch.allclose(together[t], alone, atol=1e-5)


@pytest.mark.e2e
def test_a_run_saved_under_the_old_key_name_evaluates_and_resumes(tmp_path):
    """Before 2026-12 an embedding method's test-time statistics were `method.batch_norm`; a run folder
    saved then (config.yaml and checkpoints) still evaluates and resumes, with its policy."""
    import yaml

    from metalearn.engine.checkpoint import load_checkpoint, save_checkpoint

    r = cli("metalearn-train", "debug=smoke", "method.test_batch_norm=support", "steps=10", "run_dir=run",
            "test.episodes=5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "run"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["method"]["batch_norm"] = cfg["method"].pop("test_batch_norm")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    for path in (run / "checkpoints").glob("*.pt"):
        ckpt = load_checkpoint(path)
        ckpt["config"]["method"]["batch_norm"] = ckpt["config"]["method"].pop("test_batch_norm")
        save_checkpoint(path, ckpt)
    e = cli("metalearn-eval", "run=run", "episodes=5", cwd=tmp_path)
    assert e.returncode == 0 and "batch norm: support" in e.stdout, e.stderr[-2000:]
    more = cli("metalearn-train", "resume=true", "run_dir=run", "steps=12", cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["method_config"]["test_batch_norm"] == "support"
