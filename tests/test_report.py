"""metalearn-report renders a leaderboard, paired differences and plots from real (smoke) runs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from metalearn.report import Result, across_seeds, leaderboard
from metalearn.stats import difference_over_seeds, holm, paired_difference, t_interval


@pytest.mark.parametrize("values,t_quantile", [
    ([0.90, 0.94], 12.706204736),            # k = 2: t(0.975, 1)
    ([0.90, 0.94, 0.92], 4.302652730),      # k = 3: t(0.975, 2)
    ([0.90, 0.94, 0.92, 0.95, 0.91], 2.776445105),  # k = 5: t(0.975, 4)
])
def test_t_interval_uses_students_t_with_k_minus_1_degrees_of_freedom(values, t_quantile):
    """By hand: half-width = t(0.975, k-1) * s / sqrt(k), s the sample standard deviation (ddof 1)."""
    k = len(values)
    mean = sum(values) / k
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    ci = t_interval(values)
    assert ci.n == k and ci.mean == pytest.approx(mean)
    assert ci.half_width == pytest.approx(t_quantile * s / math.sqrt(k), rel=1e-8)
    assert ci.half_width > 1.96 * s / math.sqrt(k)  # wider than the normal interval it replaces
    assert math.isnan(t_interval([0.9]).half_width)  # one value: no interval


def test_paired_difference_and_its_p_value_by_hand():
    """d = a - b = [0.2, 0, 0.2, 0.4]: mean 0.2, s = 0.163299, t = 0.2 / (s / 2) = 2.449490, 3 df:
    two-sided p = 0.091721 (tables: 0.0917), half-width t(0.975, 3) * s / 2 = 3.182446 * 0.081650 = 0.259845."""
    a, b = np.array([1.0, 0.8, 0.6, 1.0]), np.array([0.8, 0.8, 0.4, 0.6])
    p = paired_difference(a, b)
    assert p.mean == pytest.approx(0.2) and p.n == 4
    assert p.half_width == pytest.approx(0.259845, abs=1e-6)
    assert p.p_value == pytest.approx(0.091721, abs=1e-6)
    same = paired_difference(a, a)
    assert same.mean == 0 and same.p_value == 1.0


def test_holm_step_down_by_hand():
    """m = 4 at alpha 0.05: sorted p 0.01 <= 0.05/4 rejects, 0.015 <= 0.05/3 rejects, 0.03 > 0.05/2 stops,
    so 0.03 and 0.04 stand, though each is below 0.05 on its own. A nan (nothing to test) never counts."""
    assert holm([0.04, 0.01, 0.03, 0.015]) == [False, True, False, True]
    assert holm([0.01, math.nan, 0.02]) == [True, False, True]  # m = 2: 0.01 <= 0.025, 0.02 <= 0.05
    assert holm([0.2, 0.5]) == [False, False]


def test_difference_over_seeds_by_hand():
    """a: 2 seeds, b: 3 seeds, 4 shared episodes. Seed means a 0.85, 0.80 -> s^2 = 0.00125, / 2 = 0.000625;
    b 0.65, 0.60, 0.60 -> s^2 = 1/1200, / 3 = 0.000278. Seed-averaged episode differences
    [0.2333, 0.1333, 0.1667, 0.3]: mean 0.20833, s^2 = 0.0054630, / 4 = 0.0013657. Sum 0.0022685 (se 0.047629);
    Welch-Satterthwaite df = 0.0022685^2 / (0.000625^2 / 1 + 0.000278^2 / 2 + 0.0013657^2 / 3) = 4.8967."""
    a = np.array([[1.0, 0.8, 0.6, 1.0], [0.8, 0.8, 0.8, 0.8]])
    b = np.array([[0.6, 0.8, 0.6, 0.6], [0.8, 0.6, 0.4, 0.6], [0.6, 0.6, 0.6, 0.6]])
    parts = [0.000625, 1 / 3600, 0.0054629630 / 4]
    var = sum(parts)
    df = var**2 / (parts[0] ** 2 / 1 + parts[1] ** 2 / 2 + parts[2] ** 2 / 3)
    assert df == pytest.approx(4.8967, abs=1e-4)
    from scipy import stats

    d = difference_over_seeds(a, b)
    assert d.mean == pytest.approx(0.2083333) and d.n == 4
    assert d.half_width == pytest.approx(stats.t.ppf(0.975, df) * math.sqrt(var), rel=1e-6)
    assert d.p_value == pytest.approx(2 * stats.t.sf(0.2083333 / math.sqrt(var), df), rel=1e-5)
    assert math.isnan(difference_over_seeds(a[:1], b).half_width)  # one seed: its seed noise is unknown
    with pytest.raises(ValueError, match="same episodes"):
        difference_over_seeds(a, b[:, :3])


def test_difference_over_seeds_covers_where_the_simpler_intervals_do_not():
    """Simulated: two configurations with no true difference, 3 seeds each, 100 shared episodes. The episode set
    shifts one configuration against the other (sd 0.2 per episode), each training shifts its runs (sd 0.02).
    Over 1,000 draws the interval counting both covers the true 0 at about its 95% level; the t interval over
    seeds and the paired interval over episodes each miss one source and cover about 88%."""
    rng = np.random.default_rng(0)
    hits = np.zeros(3)
    for _ in range(1000):
        episode_effect = rng.normal(0, 0.2, 100)
        a = episode_effect + rng.normal(0, 0.02, (3, 1)) + rng.normal(0, 0.1, (3, 100))
        b = rng.normal(0, 0.02, (3, 1)) + rng.normal(0, 0.1, (3, 100))
        for k, ci in enumerate((difference_over_seeds(a, b), t_interval(a.mean(1) - b.mean(1)),
                                paired_difference(a.mean(0), b.mean(0)))):
            hits[k] += abs(ci.mean) <= ci.half_width
    both, seeds_only, episodes_only = hits / 1000
    assert 0.93 <= both <= 0.98
    assert seeds_only < 0.91 and episodes_only < 0.91


def test_across_seeds_compares_configurations_on_the_same_episodes():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.7, 1.0, 300)
    runs = [_result("strong", 0, base + 0.05 + 0.005 * s, seed=s, config="x") for s in range(3)]
    runs += [_result("weak", 0, base - 0.004 * s, seed=s, config="y") for s in range(3)]
    runs += [_result("once", 0, base, seed=0, config="z")]  # one seed: no seed noise to count
    runs += [_result("elsewhere", 0, base, seed=s, digest="d2", config="w") for s in range(2)]  # other episodes
    for r in runs:
        r.accuracy = float(r.per_episode.mean())
    rows = {r["method"]: r for r in across_seeds(runs)}
    assert rows["strong"]["vs_best_config"] == "best" and rows["elsewhere"]["vs_best_config"] == "best"
    expected = difference_over_seeds(np.stack([r.per_episode for r in runs[3:6]]),
                                     np.stack([r.per_episode for r in runs[:3]]))
    assert rows["weak"]["vs_best_config"].startswith(f"{100 * expected.mean:+.2f} ± {100 * expected.half_width:.2f}")
    assert rows["weak"]["vs_best_config_p"] == expected.p_value < 0.05
    assert rows["weak"]["vs_best_config"].endswith("; below the best, Holm 95%)")  # one comparison in its group
    assert rows["once"]["vs_best_config"] == ""


def _result(method, acc, per, seed=0, digest="d1", config=""):
    per = None if per is None else np.asarray(per, dtype=np.float64)
    return Result(Path(f"/runs/{method}{seed}{digest}"), method, "synthetic", "5w1s", 5, 1, acc, 0.01, digest, per,
                  config, seed, "completed")


def test_leaderboard_pairs_only_identical_episodes_and_marks_ties_after_holm():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 1.0, 600)
    leader = _result("a", float(base.mean()), base)
    close = base - np.where(rng.uniform(size=600) < 0.02, 0.2, 0.0) * rng.choice([1, -0.9], 600)
    far = base - 0.1
    other = _result("d", 0.5, base - 0.3, digest="d2")  # scored on other episodes
    rows = leaderboard([leader, _result("b", float(close.mean()), close), _result("c", float(far.mean()), far), other])
    by = {r["method"]: r for r in rows}
    assert by["a"]["vs_leader_holm"] == "leader"
    assert by["c"]["vs_leader_holm"] == "below the leader" and by["c"]["p_value"] < 1e-10
    assert by["b"]["vs_leader_holm"] == "not distinguishable from the leader" and by["b"]["p_value"] > 0.05
    assert by["d"]["vs_leader_holm"] == "not paired: other episodes" and by["d"]["vs_leader"] == ""


def test_repeats_of_one_seed_are_not_seeds():
    per = [1.0, 0.8, 0.6]
    repeats = [_result("protonet", 0.8, per, seed=0, digest="x") for _ in range(3)]
    row = across_seeds(repeats)[0]
    assert row["seeds"] == 1 and row["runs"] == 3 and math.isnan(row["ci95_across_seeds"])
    assert row["repeats_reproduced"] == "identical"
    drifted = repeats[:2] + [_result("protonet", 0.8, [1.0, 0.8, 0.61], seed=0, digest="x")]
    assert across_seeds(drifted)[0]["repeats_reproduced"] == "differ"
    seeds = [_result("protonet", a, None, seed=s) for s, a in ((0, 0.90), (1, 0.94), (1, 0.94), (2, 0.92))]
    row = across_seeds(seeds)[0]  # seed 1 twice: one seed, averaged first
    assert row["seeds"] == 3 and row["runs"] == 4
    assert row["ci95_across_seeds"] == pytest.approx(t_interval([0.90, 0.94, 0.92]).half_width)


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
    assert ranked[0]["vs_leader_holm"] == "leader" and all(0 <= float(r["p_value"]) <= 1 for r in ranked[1:])
    # the test-time batch-norm statistics show, so that runs scored under different policies stand out
    assert {r["method"]: r["test_batch_norm"] for r in ranked} == {"protonet": "running", "pixel_nn": ""}
    assert "| running |" in md
    seeds = list(csv.DictReader((out / "seeds.csv").read_text().splitlines()))
    proto = [s for s in seeds if s["method"] == "protonet"]
    assert len(proto) == 1 and proto[0]["seeds"] == "2"  # the two seeds of one configuration, averaged
    assert (out / "learning_curves.png").stat().st_size > 1000 and (out / "accuracy_vs_shots.png").is_file()


def test_a_pretraining_stage_that_only_fed_its_run_is_not_a_leaderboard_row(tmp_path):
    """<run>/pretrain is a complete run folder; completed and untested, it is part of its run, not a result."""
    from metalearn.report import find_runs

    def summary(folder, **s):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").write_text(json.dumps(s))

    summary(tmp_path / "meta", status="completed", test={"5w1s": {"accuracy": 0.9}})
    summary(tmp_path / "meta" / "pretrain", status="completed")
    summary(tmp_path / "tested" / "pretrain", status="completed", test={"5w1s": {"accuracy": 0.8}})
    summary(tmp_path / "tested", status="completed", test={"5w1s": {"accuracy": 0.9}})
    summary(tmp_path / "broken" / "pretrain", status="failed", error="out of memory")
    summary(tmp_path / "broken", status="failed", error="the pre-training stage failed")
    summary(tmp_path / "lone" / "pretrain", status="completed")  # a run folder someone named pretrain
    found = {p.relative_to(tmp_path.resolve()).as_posix() for p in find_runs([tmp_path])}
    assert found == {"meta", "tested", "tested/pretrain", "broken", "broken/pretrain", "lone/pretrain"}


def test_runs_without_a_test_result_are_listed_apart_and_never_ranked(tmp_path):
    """Trap (issue 60): a report of failed runs ranked each "#1 ... leader" with "— ± —%" under "synthetic, -"."""
    import csv

    from metalearn.report import report

    for name, status in (("a", "failed"), ("b", "interrupted")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {"status": status, "method": "protonet", "choices": {"dataset": "synthetic"}, "error": "boom"}))
    report([tmp_path], tmp_path / "out")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "leader" not in md.replace("leaderboard", "") and "—" not in md and "synthetic, -" not in md
    assert "## Runs without a test result" in md and "| protonet | synthetic | failed |" in md
    assert "| protonet | synthetic | interrupted |" in md
    rows = list(csv.DictReader((tmp_path / "out" / "leaderboard.csv").read_text().splitlines()))
    assert [(r["rank"], r["vs_leader_holm"]) for r in rows] == [("", "no test result")] * 2
