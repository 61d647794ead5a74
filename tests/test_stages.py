"""Pre-train, then meta-learn, by one command (metalearn.engine.stages): both stages in one run folder,
the stage resumable and skipped once done, and no stage that reads other data than the run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cli, compose

from metalearn.errors import MetalearnError


def pipeline(tmp_path, omniglot, *extra: str):
    return cli("metalearn-train", "experiment=meta_baseline_omniglot_small", f"dataset.root={omniglot}", "debug=smoke",
               "run_dir=run", "test.episodes=5", "test.extra=[]", *extra, cwd=tmp_path)


def weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["method"]


@pytest.mark.e2e
def test_one_command_runs_both_stages_and_a_stage_cut_short_resumes(tmp_path, omniglot):
    whole = tmp_path / "whole"
    whole.mkdir()
    r = pipeline(whole, omniglot)
    assert r.returncode == 0, r.stderr[-2000:]
    run, stage = whole / "run", whole / "run" / "pretrain"
    summary, stage_summary = (json.loads((p / "summary.json").read_text()) for p in (run, stage))
    assert stage_summary["status"] == "completed" and stage_summary["method"] == "baseline"
    assert summary["status"] == "completed" and summary["init"]["from"] == str(stage / "checkpoints" / "last.pt")
    assert summary["init"]["fresh"] == ["log_temperature"]  # everything else is the pre-trained encoder
    stage_cfg = (stage / "config.yaml").read_text()
    assert f"root: {omniglot}" in stage_cfg and "width: 16" in stage_cfg  # dataset.root and debug=smoke reach it
    assert "stage 1 of 2: pre-training (baseline_omniglot_small)" in r.stderr
    stage_log = (stage / "train.log").read_text()  # trap (issue 60): the stage is a complete run folder, log included
    assert "step 20/20" in stage_log and "stage 2 of 2" not in stage_log
    assert "stage 2 of 2" in (run / "train.log").read_text()

    cut = tmp_path / "cut"
    cut.mkdir()
    r = pipeline(cut, omniglot, "max_minutes=0")  # stops (checkpointed) after the stage's first step
    assert r.returncode == 124, r.stderr[-2000:]
    assert json.loads((cut / "run" / "pretrain" / "summary.json").read_text())["status"] == "interrupted"
    assert not (cut / "run" / "checkpoints" / "last.pt").exists()
    r = cli("metalearn-train", "resume=true", "run_dir=run", "max_minutes=null", cwd=cut)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stage 1 of 2: resuming the pre-training" in r.stderr
    for a, b in [(whole / "run" / "pretrain", cut / "run" / "pretrain"), (whole / "run", cut / "run")]:
        wa, wb = weights(a), weights(b)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{b} did not end where the uninterrupted run did"

    r = cli("metalearn-train", "resume=true", "run_dir=run", "steps=25", cwd=cut)  # train stage 2 further
    assert r.returncode == 0, r.stderr[-2000:]
    assert "already completed" in r.stderr and "resumed from step 20 of 25" in r.stderr


def test_a_stage_on_other_data_or_beside_init_run_is_refused(tmp_path):
    from metalearn.engine.lifecycle import Launch, RunLife
    from metalearn.engine.rundir import RunFolder
    from metalearn.engine.stages import check_same_data

    cfg = compose("experiment=meta_baseline_omniglot_small")
    other = compose("experiment=protonet_omniglot_5w1s")  # the full archives: other classes, other test split
    differ = "reads other data than this run: dataset.alphabets, dataset.archives, dataset.split differ"
    with pytest.raises(MetalearnError, match=differ):
        check_same_data(cfg, other)
    check_same_data(cfg, compose("experiment=baseline_omniglot_small", "dataset.reflections=[]"))  # copies only
    cfg.init.run = "outputs/train/elsewhere"
    with pytest.raises(MetalearnError, match="give one of them"):
        RunLife(cfg, Launch(tmp_path)).pretrain(cfg, RunFolder(tmp_path), [])


def test_the_stage_gets_the_data_hardware_seed_smoke_and_backbone_overrides_only():
    from metalearn.engine.stages import forwarded

    given = ["dataset=tiered_imagenet", "dataset.root=/data/t", "hardware=cuda", "hardware.threads=2", "seed=3",
             "debug=smoke", "max_minutes=10", "method.backbone.width=96", "method.backbone.name=resnet12",
             "steps=100", "method.temperature=5", "+tags=[a]", "optimizer.lr=1", "method=protonet"]
    assert forwarded(given) == given[:9]


def test_every_preset_with_a_stage_names_one_that_reads_its_data():
    from test_config import CONFIGS, options

    from metalearn.engine.stages import check_same_data

    staged = 0
    for name in options("experiment"):
        if "pretrain:" not in (CONFIGS / "experiment" / f"{name}.yaml").read_text():  # composing all 50 takes 15 s
            continue
        for data in (["dataset=tiered_imagenet"] if name.endswith("_resnet12") else []), []:
            cfg = compose(f"experiment={name}", *data)
            if not cfg.pretrain.experiment:
                continue
            stage = compose(f"experiment={cfg.pretrain.experiment}", *data, *cfg.pretrain.overrides)
            assert not stage.pretrain.experiment
            check_same_data(cfg, stage)
            staged += 1
    assert staged >= 8
