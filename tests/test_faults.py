"""Fault injection: a run killed with SIGKILL at random moments, over and over (several kills land inside a
checkpoint write), and resumed each time, ends bit-identical to the same run left alone."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli

RUN = ["debug=smoke", "steps=80", "log_every=1", "checkpoint_every=1", "val.every=15", "test.episodes=20",
       "method.backbone.width=64", "hardware.threads=1"]
TIMING = ("episodes_per_s", "pairs_per_s", "images_per_s", "time")


def _command(*args: str) -> list[str]:
    exe = shutil.which("metalearn-train")
    return ([exe] if exe else [sys.executable, "-m", "metalearn.train"]) + list(args)


def _records(run: Path) -> list[dict]:
    """metrics.jsonl without its timings (the one thing a kill may change)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _lines(run: Path) -> int:
    p = run / "metrics.jsonl"
    return len(p.read_text().splitlines()) if p.is_file() else 0


def kill_chain(run: Path, cwd: Path, kills: int, seed: int, in_writes: int = 3, most: int = 30) -> dict:
    """Start (then resume) the run and SIGKILL it `kills` times, each a random 0-40 ms after it has logged a new
    step (so every process makes progress; every other kill within 3 ms, inside the checkpoint write that
    follows), then let the last one finish. Kills go on past `kills` until `in_writes` of them have cut a
    checkpoint write short (at most `most`). Returns the counts."""
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    left_tmp, killed = 0, 0
    while killed < kills or (left_tmp < in_writes and killed < most):
        args = ["resume=true"] if (run / "checkpoints" / "last.pt").is_file() else RUN
        start = _lines(run)
        p = subprocess.Popen(_command(*args, f"run_dir={run}"), cwd=cwd, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while (_lines(run) <= start or not (run / "checkpoints" / "last.pt").is_file()) and p.poll() is None:
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.002)
        if p.poll() is not None:  # finished before the kill: the chain is over early
            assert p.returncode == 0, p.stderr.read()[-2000:]
            break
        # a checkpoint is written right after each step's log record: half the kills aim at that write
        time.sleep(rng.uniform(0.0, 0.003) if killed % 2 else rng.uniform(0.0, 0.04))
        p.send_signal(signal.SIGKILL)
        p.wait()
        killed += 1
        left_tmp += any((run / "checkpoints").glob(".*.tmp")) or any(run.glob(".*.tmp"))
        status = json.loads((run / "summary.json").read_text())["status"]
        assert status == "running"  # what SIGKILL leaves; the report shows it as killed (test below)
    final = subprocess.run(_command(f"run_dir={run}", "resume=true"), cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    return {"kills": killed, "during_writes": left_tmp}


def test_random_kills_end_where_an_uninterrupted_run_ends(tmp_path):
    ref = cli("metalearn-train", *RUN, "run_dir=ref", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr[-2000:]
    got = kill_chain(tmp_path / "chain", tmp_path, kills=12, seed=0)
    print(f"fault injection: {got['kills']} kills, {got['during_writes']} left a half-written temporary file")
    assert got["kills"] >= 10 and got["during_writes"] >= 3
    ref, run = tmp_path / "ref", tmp_path / "chain"
    assert _records(run) == _records(ref)
    assert not list(run.rglob(".*.tmp")) and not list(run.rglob("*.tmp"))  # orphans removed on restart
    for name in ("best", "last"):
        a = torch.load(ref / "checkpoints" / f"{name}.pt", weights_only=True)
        b = torch.load(run / "checkpoints" / f"{name}.pt", weights_only=True)
        assert a["step"] == b["step"]
        assert all(torch.equal(a["method"][k], b["method"][k]) for k in a["method"])
    ta = json.loads((ref / "eval" / "test_5w1s.json").read_text())
    tb = json.loads((run / "eval" / "test_5w1s.json").read_text())
    assert ta == tb
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (ref, run))
    assert sb["status"] == "completed" and sa["test"] == sb["test"] and sa["best_val"] == sb["best_val"]


@pytest.mark.parametrize("alive", [False, True])
def test_the_report_tells_a_killed_run_from_a_live_one(tmp_path, alive):
    from metalearn.engine.rundir import observed_status

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # metalearn"])
    try:
        cmdline = Path(f"/proc/{p.pid}/cmdline")
        deadline = time.monotonic() + 10
        while alive and b"metalearn" not in cmdline.read_bytes():  # the fork shows the parent's until exec
            assert time.monotonic() < deadline
            time.sleep(0.01)
        if not alive:
            p.kill()
            p.wait()
        import socket

        s = {"status": "running", "process": {"pid": p.pid, "host": socket.gethostname()}}
        assert observed_status(s) == ("running" if alive else "killed")
        assert observed_status({**s, "process": {"pid": p.pid, "host": "elsewhere"}}) == "running"
        assert observed_status({"status": "completed", **{k: v for k, v in s.items() if k != "status"}}) == "completed"
    finally:
        p.kill()
        p.wait()
