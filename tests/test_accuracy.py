"""Accuracy runs that back the results record (docs/results.md). Slow (minutes to an hour on 2 CPU cores):
skipped by default, run with `pytest -m slow`."""

from __future__ import annotations

import json

import pytest
from conftest import cli

pytestmark = pytest.mark.slow


def summary(cwd, *args) -> dict:
    r = cli("metalearn-train", *args, "run_dir=run", cwd=cwd, timeout=4 * 3600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((cwd / "run" / "summary.json").read_text())


def test_protonet_omniglot_small_reaches_the_paper_regime(tmp_path, omniglot):
    s = summary(tmp_path, "experiment=protonet_omniglot_small", f"dataset.root={omniglot}")
    assert s["test"]["5w1s"]["accuracy"] >= 0.96, s["test"]
    assert s["test"]["20w1s"]["accuracy"] >= 0.88, s["test"]
    assert s["wall_time_s"] <= 3600


def test_synthetic_is_a_real_few_shot_problem(tmp_path):
    """A trained ProtoNet must clearly beat nearest neighbour in pixel space on the default dataset."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    proto = summary(tmp_path / "a")
    floor = summary(tmp_path / "b", "method=pixel_nn")
    assert proto["test"]["5w1s"]["accuracy"] >= floor["test"]["5w1s"]["accuracy"] + 0.15, (proto["test"], floor["test"])
