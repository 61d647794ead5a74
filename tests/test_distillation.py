"""Pre-training losses of the transfer baselines. Born-again distillation (method.teacher): the loss is the
formula, the teacher is frozen and never saved with the student, a teacher of other data is refused, and a
distilled run resumes where an uninterrupted one ends. The margin (method.margin): the formula, in logit units
for baseline and cosine units for baselinepp."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import cli, compose

from metalearn.errors import MetalearnError
from metalearn.methods import build_method
from metalearn.tasks.sources import LabelledBatch


def baseline(seed: int):
    torch.manual_seed(seed)
    cfg = compose("method=baseline", "method.backbone.width=8").method
    return build_method(cfg, (1, 28, 28), 5, train_classes=7)


def test_the_loss_is_rfs_formula_and_only_the_student_learns():
    student, teacher = baseline(0), baseline(1)
    teacher_before = copy.deepcopy(teacher.state_dict())
    student.set_teacher(teacher, weight=0.25, temperature=3.0)
    batch = LabelledBatch(torch.randn(12, 1, 28, 28), torch.arange(12) % 7, 7)
    with torch.no_grad():
        s, t = student.class_logits(batch.images), teacher.class_logits(batch.images)
    ce = torch.nn.functional.cross_entropy(s, batch.labels)
    p = torch.softmax(t / 3, -1)  # KL(teacher || student) at temperature 3, per image, averaged, times T^2
    kl = (p * (p.log() - torch.log_softmax(s / 3, -1))).sum(-1).mean() * 9
    stats = student.train_step(batch, torch.optim.SGD(student.parameters(), lr=0.1))
    assert stats["cross_entropy"] == pytest.approx(float(ce), rel=1e-5)
    assert stats["distillation"] == pytest.approx(float(kl), rel=1e-5)
    assert stats["loss"] == pytest.approx(0.75 * float(ce) + 0.25 * float(kl), rel=1e-5)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())  # frozen, eval mode
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("_teacher") for k in student.state_dict())  # never in the student's checkpoints


def test_a_teacher_that_is_the_student_adds_no_distillation_term():
    student = baseline(0)
    student.eval()  # batch norm as the teacher's, so both give the same logits
    student.set_teacher(copy.deepcopy(student), weight=0.5, temperature=4.0)
    batch = LabelledBatch(torch.randn(6, 1, 28, 28), torch.arange(6), 7)
    stats = student.train_step(batch, torch.optim.SGD(student.parameters(), lr=0.0))
    assert stats["distillation"] == pytest.approx(0.0, abs=1e-6)
    assert stats["loss"] == pytest.approx(0.5 * stats["cross_entropy"], rel=1e-6)


def test_bad_distillation_settings_are_named():
    with pytest.raises(MetalearnError, match="distill_weight=1.5"):
        baseline(0).set_teacher(baseline(1), weight=1.5, temperature=4.0)


def test_distillation_settings_without_a_teacher_are_refused_not_ignored():
    from metalearn.config import BaselineConfig
    from metalearn.methods.teacher import check_distillation_settings

    def check(*overrides):
        check_distillation_settings(compose(*overrides).method, BaselineConfig)

    check("method=baseline")  # the defaults, no teacher: a plain run
    check("method=protonet")  # a method without the settings
    check("method=baseline", "method.teacher=t", "method.distill_weight=0.3")
    with pytest.raises(MetalearnError, match=r"method.distill_weight=0.3 without method.teacher: .* add "
                                             r"method.teacher=<a baseline run folder> or drop method.distill_weight"):
        check("method=baseline", "method.distill_weight=0.3")


@pytest.mark.e2e
def test_a_distilled_run_trains_resumes_and_refuses_a_teacher_of_other_data(tmp_path):
    smoke = ["method=baseline", "debug=smoke", "test.episodes=5", "val.every=0"]
    r = cli("metalearn-train", *smoke, "run_dir=teacher", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli("metalearn-train", *smoke, "method.teacher=teacher", "run_dir=whole", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    student = torch.load(tmp_path / "whole/checkpoints/last.pt", weights_only=True)
    assert student["config"]["method"]["teacher"] == "teacher" and not any("teacher" in k for k in student["method"])
    plain = torch.load(tmp_path / "teacher/checkpoints/last.pt", weights_only=True)["method"]
    assert any(not torch.equal(plain[k], v) for k, v in student["method"].items())  # the teacher changed the training
    logged = [json.loads(line) for line in (tmp_path / "whole/metrics.jsonl").read_text().splitlines()]
    parts = [m for m in logged if m["kind"] == "train"]
    assert parts and all(m["loss"] == pytest.approx(0.5 * m["cross_entropy"] + 0.5 * m["distillation"]) for m in parts)

    r = cli("metalearn-train", *smoke, "method.teacher=teacher", "run_dir=cut", "max_minutes=0", cwd=tmp_path)
    assert r.returncode == 124, r.stderr[-2000:]
    r = cli("metalearn-train", "resume=true", "run_dir=cut", "max_minutes=null", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    cut = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)["method"]
    assert all(torch.equal(cut[k], v) for k, v in student["method"].items()), "the resumed run ended elsewhere"

    r = cli("metalearn-train", *smoke, "dataset.num_classes=40", "method.teacher=teacher", "run_dir=other",
            cwd=tmp_path)
    assert r.returncode != 0 and "method.teacher=teacher learnt other data" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    r = cli("metalearn-train", *smoke, "method.teacher=nowhere", "run_dir=none", cwd=tmp_path)
    assert r.returncode != 0 and "method.teacher=nowhere: no run folder there" in r.stderr, r.stderr[-2000:]
    assert json.loads((tmp_path / "whole/summary.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("name", ["baseline", "baselinepp"])
def test_the_margin_is_taken_from_the_true_class_logit_only(name):
    torch.manual_seed(0)
    cfg = compose(f"method={name}", "method.backbone.width=8", "method.margin=-0.3").method
    method = build_method(cfg, (1, 28, 28), 5, train_classes=7)
    batch = LabelledBatch(torch.randn(12, 1, 28, 28), torch.arange(12) % 7, 7)
    with torch.no_grad():
        logits = method.class_logits(batch.images)
    unit = 2.0 if name == "baselinepp" else 1.0  # baselinepp's cosine scale for 7 classes
    shifted = logits + 0.3 * unit * torch.nn.functional.one_hot(batch.labels, 7)
    expected = torch.nn.functional.cross_entropy(shifted, batch.labels)
    assert float(expected) < float(torch.nn.functional.cross_entropy(logits, batch.labels))  # easier: negative
    stats = method.train_step(batch, torch.optim.SGD(method.parameters(), lr=0.0))
    assert stats["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert stats["accuracy"] == pytest.approx(float((logits.argmax(-1) == batch.labels).float().mean()))
