"""metalearn-report renders a leaderboard, paired differences and plots from real (smoke) runs."""

from __future__ import annotations

import csv

import numpy as np

from metalearn.report import paired_difference


def test_paired_difference_is_the_mean_and_ci_of_per_episode_differences():
    a, b = np.array([1.0, 0.8, 0.6, 1.0]), np.array([0.8, 0.8, 0.4, 0.6])
    m, c = paired_difference(a, b)
    d = a - b
    assert np.isclose(m, d.mean()) and np.isclose(c, 1.96 * d.std() / 2)


def test_report_from_real_runs(tmp_path):
    from conftest import cli

    for name, seed in (("protonet", 0), ("protonet", 1), ("pixel_nn", 0)):
        r = cli("metalearn-train", f"method={name}", "debug=smoke", f"seed={seed}", f"run_dir=runs/{name}{seed}",
                "test.episodes=30", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-1500:]
    failed = cli("metalearn-train", "debug=smoke", "optimizer.lr=1e25", "run_dir=runs/diverged", cwd=tmp_path)
    assert failed.returncode == 2
    out = tmp_path / "report"
    r = cli("metalearn-report", "runs", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-1500:]
    md = (out / "leaderboard.md").read_text()
    assert "## synthetic, 5w1s" in md and "pixel_nn" in md and "diverged" in md  # failures are listed, not hidden
    rows = list(csv.DictReader((out / "leaderboard.csv").read_text().splitlines()))
    ranked = [r for r in rows if r["task"] == "5w1s"]
    assert [int(r["rank"]) for r in ranked] == [1, 2, 3]
    assert float(ranked[0]["accuracy"]) >= float(ranked[-1]["accuracy"])
    assert ranked[0]["vs_leader"] == "" and all(r["vs_leader"].startswith(("+", "-")) for r in ranked[1:])
    # the test-time batch-norm statistics show, so that runs scored under different policies stand out
    assert {r["method"]: r["test_batch_norm"] for r in ranked} == {"protonet": "running", "pixel_nn": ""}
    assert "| running |" in md
    seeds = list(csv.DictReader((out / "seeds.csv").read_text().splitlines()))
    proto = [s for s in seeds if s["method"] == "protonet"]
    assert len(proto) == 1 and proto[0]["seeds"] == "2"  # the two seeds of one configuration, averaged
    assert (out / "learning_curves.png").stat().st_size > 1000 and (out / "accuracy_vs_shots.png").is_file()
