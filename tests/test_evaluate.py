"""Evaluation: the 95% CI formula, fixed episodes, per-episode results saved for pairwise comparison."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metalearn.config import SyntheticConfig
from metalearn.data.synthetic import build_synthetic
from metalearn.engine.evaluate import evaluate, protocol_for
from metalearn.methods.pixel_nn import PixelNN
from metalearn.tasks.episodes import TaskSpec


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_synthetic(SyntheticConfig(num_classes=60, images_per_class=10,
                                           cache_dir=str(tmp_path_factory.mktemp("c"))))


def test_accuracy_and_its_students_t_interval(store):
    r = evaluate(PixelNN(), store, protocol_for("test", TaskSpec(5, 1, 3), 40, 2), torch.device("cpu"), batch=7)
    acc = r.per_episode
    assert len(acc) == 40 and ((acc >= 0) & (acc <= 1)).all()
    assert r.accuracy == pytest.approx(acc.mean())
    # t(0.975, 39) = 2.022691 (tables: 2.023), the sample standard deviation (ddof 1)
    assert r.ci95 == pytest.approx(2.022691 * acc.std(ddof=1) / np.sqrt(40), rel=1e-6)


def test_batching_does_not_change_results(store):
    a = evaluate(PixelNN(), store, protocol_for("test", TaskSpec(5, 1, 3), 30, 2), torch.device("cpu"), batch=30)
    b = evaluate(PixelNN(), store, protocol_for("test", TaskSpec(5, 1, 3), 30, 2), torch.device("cpu"), batch=4)
    assert np.array_equal(a.per_episode, b.per_episode) and a.plans.digest() == b.plans.digest()


def test_results_and_episodes_are_saved(store, tmp_path):
    r = evaluate(PixelNN(), store, protocol_for("test", TaskSpec(5, 1, 3), 20, 2), torch.device("cpu"))
    path = r.save(tmp_path, "test_5w1s")
    data = json.loads(path.read_text())
    assert data["per_episode"] == r.per_episode.tolist() and data["episodes_digest"] == r.plans.digest()
    plans = np.load(tmp_path / "test_5w1s_episodes.npz")
    assert np.array_equal(plans["support"], r.plans.support)


def test_the_test_set_is_the_same_for_every_method(store):
    from metalearn.backbones import Conv4
    from metalearn.methods.protonet import ProtoNet

    a = evaluate(PixelNN(), store, protocol_for("test", TaskSpec(5, 1, 3), 20, 2), torch.device("cpu"))
    b = evaluate(ProtoNet(Conv4(1, 8)), store, protocol_for("test", TaskSpec(5, 1, 3), 20, 2), torch.device("cpu"))
    assert a.plans.digest() == b.plans.digest()


def test_t_quantiles_and_p_values_equal_scipy_stats():
    """metalearn.stats uses scipy.special (lighter to import); the figures are scipy.stats.t's."""
    import math

    import numpy as np
    from scipy import stats

    from metalearn.stats import paired_difference, t_interval

    rng = np.random.default_rng(0)
    for n in (2, 3, 6, 600):
        x = rng.normal(size=n)
        expected = stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n)
        assert t_interval(x).half_width == pytest.approx(expected, rel=1e-12)
        d = paired_difference(x + 0.3, np.zeros(n))
        t = (x + 0.3).mean() / ((x + 0.3).std(ddof=1) / math.sqrt(n))
        assert d.p_value == pytest.approx(2 * stats.t.sf(abs(t), n - 1), rel=1e-10)


def test_test_time_augmentation_averages_codes_of_copies_reproducibly(store):
    """tta.copies=1 is the plain evaluation; more copies give another, reproducible result, drawn from
    tta.seed without touching the caller's random state."""
    from metalearn.backbones import Conv4
    from metalearn.config import TTAConfig
    from metalearn.methods.protonet import ProtoNet

    torch.manual_seed(0)
    method = ProtoNet(Conv4(1, 8))
    def score(**options):
        return evaluate(method, store, protocol_for("test", TaskSpec(5, 1, 3), 30, 2, **options), torch.device("cpu"))

    plain = score()
    assert np.array_equal(score(tta=TTAConfig(copies=1)).per_episode, plain.per_episode)
    state = torch.random.get_rng_state()
    a = score(tta=TTAConfig(copies=4, rotate=20, scale=0.2, shift=0.2))
    assert torch.equal(torch.random.get_rng_state(), state)
    b = score(tta=TTAConfig(copies=4, rotate=20, scale=0.2, shift=0.2))
    c = score(tta=TTAConfig(copies=4, rotate=20, scale=0.2, shift=0.2, seed=1))
    assert np.array_equal(a.per_episode, b.per_episode) and not np.array_equal(a.per_episode, plain.per_episode)
    assert not np.array_equal(a.per_episode, c.per_episode)
    assert a.summary()["tta"]["copies"] == 4 and "tta" not in plain.summary()
    # elastic copies (tta.elastic_alpha, AugmentConfig's distortion): other copies from the same seed, reproducibly
    e = score(tta=TTAConfig(copies=4, rotate=20, scale=0.2, shift=0.2, elastic_alpha=16))
    f = score(tta=TTAConfig(copies=4, rotate=20, scale=0.2, shift=0.2, elastic_alpha=16))
    assert np.array_equal(e.per_episode, f.per_episode) and not np.array_equal(e.per_episode, a.per_episode)
    assert e.summary()["tta"]["elastic_alpha"] == 16


def test_result_names_tell_elastic_copies_apart():
    """Two test-time augmentations never share a result file: the elastic distortion and the readout are in the name,
    spelt as before readouts were registered (tim's as head-tim), so earlier results keep their files."""
    from metalearn.config import EvalProtocol, TTAConfig
    from metalearn.readouts import build_readout

    def name(readout=None, **tta):
        protocol = EvalProtocol(split="test", episodes=600, seed=2, tta=TTAConfig(**tta), readout=readout)
        return protocol.file_name("20w1s", 15, "last", build_readout(readout))

    assert name() == "test_20w1s_q15_e600_seed2_last"
    assert name(copies=32) == "test_20w1s_q15_e600_seed2_last_tta-32-r10-s0.1-t0.1-seed0"
    assert name(copies=32, elastic_alpha=16) == "test_20w1s_q15_e600_seed2_last_tta-32-r10-s0.1-t0.1-e16-4-seed0"
    assert (name("chamfer", copies=96, elastic_alpha=16)
            == "test_20w1s_q15_e600_seed2_last_tta-96-r10-s0.1-t0.1-e16-4-seed0-chamfer")
    assert name("tim") == "test_20w1s_q15_e600_seed2_last_head-tim"


def test_test_time_augmentation_is_refused_for_a_method_that_does_not_encode_each_image_alone(store):
    from metalearn.backbones import Conv4
    from metalearn.config import TTAConfig
    from metalearn.errors import MetalearnError
    from metalearn.methods.maml import MAML

    maml = MAML(Conv4(1, 8, pool="stride"), 8, 5, 0.4, 1, 1)
    with pytest.raises(MetalearnError, match="tta.copies=4 averages an embedding method's codes"):
        evaluate(maml, store, protocol_for("test", TaskSpec(5, 1, 3), 4, 2, tta=TTAConfig(copies=4)), torch.device("cpu"))


def test_readout_tim_classifies_any_embedding_methods_codes_transductively(store):
    """readout=tim is TIM's inference on the method's own codes, and its result says it is transductive."""
    from metalearn.backbones import Conv4
    from metalearn.engine.evaluate import encode_distinct
    from metalearn.methods.protonet import ProtoNet
    from metalearn.methods.tim import tim_head
    from metalearn.tasks.episodes import episode_labels

    torch.manual_seed(0)
    method = ProtoNet(Conv4(1, 8)).eval()
    protocol = protocol_for("test", TaskSpec(5, 1, 3), 12, 2)
    own = evaluate(method, store, protocol, torch.device("cpu"))
    tim = evaluate(method, store, protocol_for("test", TaskSpec(5, 1, 3), 12, 2, readout="tim"), torch.device("cpu"))
    codes, rows = encode_distinct(method, store, tim.plans.image_ids(), torch.device("cpu"))
    z = codes[rows]
    logits = tim_head(z[:, :5], episode_labels(12, 5, 1), z[:, 5:], 5)
    expected = (logits.argmax(-1) == episode_labels(12, 5, 3)).double().mean(-1).numpy()
    np.testing.assert_allclose(tim.per_episode, expected)
    assert not np.array_equal(tim.per_episode, own.per_episode)
    assert tim.summary()["transductive"] and tim.summary()["head"] == "tim"
    assert "transductive" not in own.summary() and "head" not in own.summary()


def test_readout_tim_is_refused_for_a_method_that_does_not_encode_each_image_alone(store):
    from metalearn.backbones import Conv4
    from metalearn.errors import MetalearnError
    from metalearn.methods.maml import MAML

    maml = MAML(Conv4(1, 8, pool="stride"), 8, 5, 0.4, 1, 1)
    with pytest.raises(MetalearnError, match="readout=tim classifies an embedding method's codes"):
        evaluate(maml, store, protocol_for("test", TaskSpec(5, 1, 3), 4, 2, readout="tim"), torch.device("cpu"))
    with pytest.raises(MetalearnError, match="readout='svm' is not a known readout; choose one of: chamfer"):
        evaluate(maml, store, protocol_for("test", TaskSpec(5, 1, 3), 4, 2, readout="svm"), torch.device("cpu"))


@pytest.mark.parametrize("name", ["readout_levers.py", "encoder_screen.py"])
def test_the_lever_experiments_name_a_bad_run_in_one_line(tmp_path, name):
    """The lever experiments (experiments/readout_levers.py, encoder_screen.py) are run by hand on run folders: a
    wrong folder is one line naming it, exit status 2."""
    script = Path(__file__).resolve().parents[1] / "experiments" / name
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "nope")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(f"error: {tmp_path / 'nope'} is not a metalearn run folder (no config.yaml); "
                             "give a folder under outputs/train/")


def test_an_ensemble_averages_its_members_class_probabilities_on_one_list_of_episodes(store):
    """Each member scores as it does alone; the ensemble's query is the argmax of the members' mean softmax."""
    from metalearn.backbones import Conv4
    from metalearn.engine.evaluate import evaluate_ensemble
    from metalearn.methods.maml import MAML
    from metalearn.methods.protonet import ProtoNet
    from metalearn.tasks.episodes import episode_labels, gather

    torch.manual_seed(0)
    members = [ProtoNet(Conv4(1, 8)), ProtoNet(Conv4(1, 8)), ProtoNet(Conv4(1, 8)),
               MAML(Conv4(1, 8, pool="stride"), 8, 5, 0.4, 1, 1)]  # codes, and adaptation episode by episode
    spec, cpu = TaskSpec(5, 1, 3), torch.device("cpu")
    ensemble, alone = evaluate_ensemble([(m, store) for m in members], protocol_for("test", spec, 12, 2), cpu, batch=5)
    for m, a in zip(members, alone, strict=True):
        single = evaluate(m, store, protocol_for("test", spec, 12, 2), cpu, batch=5)
        assert single.plans.digest() == a.plans.digest() == ensemble.plans.digest()
        np.testing.assert_allclose(a.per_episode, single.per_episode)
    b = gather(store, ensemble.plans, cpu)
    with torch.enable_grad():  # MAML adapts at test time
        probs = [m.eval().predict(b.support, b.support_labels, b.query, 5).detach().softmax(-1) for m in members]
    expected = (torch.stack(probs).mean(0).argmax(-1) == episode_labels(12, 5, 3)).double().mean(-1).numpy()
    np.testing.assert_allclose(ensemble.per_episode, expected)
    assert not any(np.array_equal(ensemble.per_episode, a.per_episode) for a in alone)
    assert "transductive" not in ensemble.summary()
    tim, _ = evaluate_ensemble([(m, store) for m in members[:2]], protocol_for("test", spec, 12, 2, readout="tim"), cpu)
    assert tim.summary()["transductive"]  # one transductive member (here all, by readout=tim) makes the ensemble so
