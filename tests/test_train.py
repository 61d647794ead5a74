"""The training engine: run folder contents, a killed-and-resumed run equals an uninterrupted one,
non-finite losses stop the run and keep the last good checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import cli

# a short but complete run: validation, several checkpoints, test, on a 1,200-class synthetic set
FAST = ["debug=smoke", "steps=300", "checkpoint_every=20", "log_every=7", "val.every=50", "seed=3", "augment.enabled=true",
        "hardware.threads=1"]


def load_metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("episodes_per_s", None)  # a timing, not a result
        r.pop("time", None)  # the wall time of the record
    return rows


def test_run_folder_holds_everything(tmp_path):
    r = cli("metalearn-train", "debug=smoke", "run_dir=run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "learning_curve.png", "train.log",
                 "checkpoints/best.pt", "checkpoints/last.pt", "eval/test_5w1s.json", "eval/test_5w1s_episodes.npz"):
        assert (run / name).is_file(), name
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["method"] == "protonet" and s["dataset"] == "synthetic"
    assert s["choices"]["method"] == "protonet" and s["choices"]["debug"] == "smoke"
    assert s["method_config"]["backbone"]["width"] == 16
    assert 0 <= s["test"]["5w1s"]["accuracy"] <= 1 and s["test"]["5w1s"]["episodes"] == 20
    assert s["best_val"]["step"] in (10, 20) and s["wall_time_s"] > 0 and "commit" in s
    rows = load_metrics(run)
    assert {"step", "loss", "accuracy", "lr"} <= set(rows[0]) and rows[-1]["step"] == 20
    assert (run / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    # a second new run into the same folder is refused before it touches the first run's files
    kept = {name: (run / name).read_bytes() for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt")}
    again = cli("metalearn-train", "debug=smoke", "method=matching", "run_dir=run", cwd=tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr
    assert "already holds a completed run of protonet (checkpoint at step 20)" in again.stderr
    assert "metalearn-train resume=true run_dir=run" in again.stderr
    assert kept == {name: (run / name).read_bytes() for name in kept}


def test_killed_run_resumes_to_the_same_result(tmp_path):
    ref = cli("metalearn-train", *FAST, "run_dir=ref", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr

    exe = [sys.executable, "-m", "metalearn.train", *FAST, "run_dir=killed"]
    proc = subprocess.Popen(exe, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert killed["status"] == "running", "the run finished before it could be killed; make FAST longer"

    res = cli("metalearn-train", "resume=true", "run_dir=killed", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "resumed from step" in res.stderr
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("ref", "killed"))
    for key in ("final_val", "best_val", "steps_done", "status"):
        assert a[key] == b[key], key
    assert {k: v for k, v in a["final_train"].items() if k != "episodes_per_s"} == \
           {k: v for k, v in b["final_train"].items() if k != "episodes_per_s"}
    assert a["test"] == b["test"]
    pa, pb = (json.loads((tmp_path / d / "eval" / "test_5w1s.json").read_text())["per_episode"] for d in ("ref", "killed"))
    assert pa == pb
    assert load_metrics(tmp_path / "ref") == load_metrics(tmp_path / "killed")


def test_finished_run_trained_further_equals_the_longer_run(tmp_path):
    """resume=true steps=N continues a finished run to N steps and ends where one N-step run does (the
    first run's last step on the logging and validation grid, so both streams hold the same records)."""
    short = ["debug=smoke", "checkpoint_every=14", "log_every=7", "val.every=14", "seed=5", "hardware.threads=1"]
    assert cli("metalearn-train", *short, "steps=28", "run_dir=long", cwd=tmp_path).returncode == 0
    assert cli("metalearn-train", *short, "steps=14", "run_dir=short", cwd=tmp_path).returncode == 0
    res = cli("metalearn-train", "resume=true", "run_dir=short", "steps=28", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "resumed from step 14 of 28" in res.stderr
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("long", "short"))
    for key in ("final_val", "best_val", "steps_done", "status", "test", "steps"):
        assert a[key] == b[key], key
    assert {k: v for k, v in a["final_train"].items() if k != "episodes_per_s"} == \
           {k: v for k, v in b["final_train"].items() if k != "episodes_per_s"}
    assert load_metrics(tmp_path / "long") == load_metrics(tmp_path / "short")
    assert "steps: 28" in (tmp_path / "short" / "config.yaml").read_text()  # a later kill resumes towards 28
    assert b["overrides"][-1] == "steps=28" and "steps=14" not in b["overrides"]


def test_resume_refuses_what_it_would_not_apply(tmp_path):
    """Overrides other than steps= used to be dropped without a word on resume: now each is named, with
    the way to get it; steps cannot go below the checkpoint, nor stretch a schedule laid out over the run."""
    assert cli("metalearn-train", "debug=smoke", "schedule.name=cosine", "run_dir=run", cwd=tmp_path).returncode == 0
    kept = {n: (tmp_path / "run" / n).read_bytes() for n in ("config.yaml", "overrides.json", "checkpoints/last.pt")}
    for args, says in ((["method=matching", "ways=10"], "method=matching, ways=10 would not apply"),
                       (["steps=40"], "schedule.name=cosine is laid out over its steps=20"),
                       (["hardware.amp=bf16", "hardware.threads=1"], "hardware.amp=bf16 would not apply")):
        r = cli("metalearn-train", "resume=true", "run_dir=run", *args, cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert says in r.stderr, r.stderr
    assert "init.run=" in r.stderr and "config.yaml" in r.stderr
    assert cli("metalearn-train", "debug=smoke", "run_dir=plain", cwd=tmp_path).returncode == 0
    r = cli("metalearn-train", "resume=true", "run_dir=plain", "steps=10", cwd=tmp_path)
    assert r.returncode == 2 and "steps=10 is below this run's checkpoint at step 20" in r.stderr, r.stderr
    assert kept == {n: (tmp_path / "run" / n).read_bytes() for n in kept}


def test_resume_may_change_the_cpu_threads_and_keeps_the_change(tmp_path):
    """Threads decide where a run computes, not what: a run started on 2 may resume on 1 (a machine that got
    busier), and config.yaml and overrides.json record it so a later resume keeps it."""
    base = ["debug=smoke", "checkpoint_every=10", "steps=10", "run_dir=run"]
    assert cli("metalearn-train", *base, "hardware.threads=2", cwd=tmp_path).returncode == 0
    res = cli("metalearn-train", "resume=true", "run_dir=run", "steps=20", "hardware.threads=1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "resumed from step 10 of 20" in res.stderr and "cpu (1 threads)" in res.stderr
    assert "threads: 1" in (tmp_path / "run" / "config.yaml").read_text()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps_done"] == 20
    assert summary["overrides"][-2:] == ["hardware.threads=1", "steps=20"]
    assert "hardware.threads=2" not in summary["overrides"]


def test_max_minutes_stops_checkpointed_and_the_resumed_run_ends_where_one_run_does(tmp_path):
    """max_minutes (a scheduler's wall limit) checkpoints the step it stops at, off the checkpoint grid
    too, exits 124, and each resume=true keeps the limit; max_minutes=null on resume lifts it. With a limit
    of 0 every process trains one step: the chained run must end where one uninterrupted run does."""
    args = ["debug=smoke", "steps=4", "log_every=2", "checkpoint_every=3", "val.every=2", "seed=3",
            "augment.enabled=true", "hardware.threads=1"]
    assert cli("metalearn-train", *args, "run_dir=ref", cwd=tmp_path).returncode == 0
    r = cli("metalearn-train", *args, "max_minutes=0", "run_dir=timed", cwd=tmp_path)
    assert r.returncode == 124 and "Traceback" not in r.stderr, r.stderr
    assert "max_minutes=0.0 reached at step 1 of 4" in r.stderr and "resume=true run_dir=" in r.stderr
    stopped = json.loads((tmp_path / "timed" / "summary.json").read_text())
    assert stopped["status"] == "interrupted" and stopped["steps_done"] == 1
    for step in (2, 3):
        r = cli("metalearn-train", "resume=true", "run_dir=timed", cwd=tmp_path)
        assert r.returncode == 124 and f"resumed from step {step - 1} of 4" in r.stderr, r.stderr
        assert f"reached at step {step} of 4" in r.stderr
    r = cli("metalearn-train", "resume=true", "run_dir=timed", "max_minutes=null", cwd=tmp_path)
    assert r.returncode == 0 and "resumed from step 3 of 4" in r.stderr, r.stderr
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("ref", "timed"))
    for key in ("final_val", "best_val", "steps_done", "status", "test"):
        assert a[key] == b[key], key
    assert {k: v for k, v in a["final_train"].items() if k != "episodes_per_s"} == \
           {k: v for k, v in b["final_train"].items() if k != "episodes_per_s"}
    assert load_metrics(tmp_path / "ref") == load_metrics(tmp_path / "timed")
    assert "max_minutes: null" in (tmp_path / "timed" / "config.yaml").read_text()


def test_sigterm_marks_the_run_interrupted_and_it_resumes(tmp_path):
    exe = [sys.executable, "-m", "metalearn.train", *FAST, "run_dir=stopped"]
    proc = subprocess.Popen(exe, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = tmp_path / "stopped" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    stopped = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert stopped["status"] == "interrupted" and stopped["steps_done"] >= 1
    assert proc.returncode == 130 and "Traceback" not in err  # one line says where it stopped and how to go on
    assert f"resume=true run_dir={tmp_path / 'stopped'}" in err
    res = cli("metalearn-train", "resume=true", "run_dir=stopped", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "stopped" / "summary.json").read_text())["status"] == "completed"


def test_resume_without_checkpoint_is_explained(tmp_path):
    r = cli("metalearn-train", "resume=true", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no checkpoint to resume" in r.stderr and "run_dir=PATH" in r.stderr
    assert not (tmp_path / "outputs" / "train").exists() or not any((tmp_path / "outputs" / "train").rglob("*.pt"))
    r = cli("metalearn-train", "resume=true", "run_dir=nowhere", cwd=tmp_path)
    assert r.returncode == 2 and "no checkpoint to resume in nowhere" in r.stderr


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    r = cli("metalearn-train", "debug=smoke", "optimizer.lr=1e25", "steps=50", "checkpoint_every=1",
            "val.every=1000", "run_dir=run", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "training loss became nan at step" in r.stderr and "optimizer.lr" in r.stderr
    import re

    import torch

    bad_step = int(re.search(r"at step (\d+)", r.stderr).group(1))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["step"] == bad_step - 1
    assert all(torch.isfinite(v).all() for v in ckpt["method"].values() if v.is_floating_point())
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


def test_pixel_nn_floor_runs_without_training(tmp_path):
    r = cli("metalearn-train", "method=pixel_nn", "debug=smoke", "run_dir=run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "completed" and 0.2 < s["test"]["5w1s"]["accuracy"] <= 1


def test_validation_episodes_are_fixed(tmp_path):
    """Two runs with different training seeds are validated and tested on identical episodes."""
    for seed in (0, 1):
        assert cli("metalearn-train", "debug=smoke", f"seed={seed}", f"run_dir=s{seed}", cwd=tmp_path).returncode == 0
    a, b = (json.loads((tmp_path / f"s{s}" / "eval" / "test_5w1s.json").read_text()) for s in (0, 1))
    assert a["episodes_digest"] == b["episodes_digest"]
    ea, eb = (np.load(tmp_path / f"s{s}" / "eval" / "test_5w1s_episodes.npz") for s in (0, 1))
    assert np.array_equal(ea["query"], eb["query"])
