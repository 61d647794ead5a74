"""A command's start and end (issue 36): the learning curve drawn after the command returns where that is
safe, the process ended without tearing down its modules, the command line composed once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import compose, run_main

from metalearn import console as terminal
from metalearn.engine import plots
from metalearn.engine.plots import plots_detached


@pytest.mark.parametrize("console,plots_key,env,logger,detached", [
    (True, "auto", {}, None, True),  # the command at a prompt: nobody waits for the PNG
    (False, "auto", {}, None, False),  # a Python caller may read the folder next
    (True, "auto", {"SLURM_JOB_ID": "7"}, None, False),  # the job's processes end with its script
    (True, "auto", {}, "csv", False),  # a tracker uploads the run's files at the end
    (False, "background", {}, None, True),
    (True, "foreground", {}, None, False),
])
def test_the_learning_curve_is_drawn_after_exit_only_where_safe(monkeypatch, console, plots_key, env, logger,
                                                                 detached):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(terminal, "_in_console_script", console)
    cfg = compose(f"plots={plots_key}", *([f"logger={logger}"] if logger else []))
    assert plots_detached(cfg) is detached


def _run_folder(path, metrics: str) -> None:
    path.mkdir()
    (path / "metrics.jsonl").write_text(metrics)
    (path / "summary.json").write_text(json.dumps({"best_val": {"step": 2, "accuracy": 0.6, "ci95": 0.05},
                                                   "test": {"5w1s": {"accuracy": 0.55, "ci95": 0.04}}}))


def test_a_detached_process_draws_the_curve_and_a_failure_is_recorded_in_the_run(tmp_path):
    rows = [{"step": s, "loss": 1.0 / s, "accuracy": 0.5 + 0.01 * s, "lr": 1e-3} for s in (1, 2, 3)]
    rows.append({"step": 2, "kind": "val", "accuracy": 0.6, "ci95": 0.05})
    good = tmp_path / "good"
    _run_folder(good, "".join(json.dumps(r) + "\n" for r in rows))
    plots.draw_detached(good, "protonet · synthetic · 5-way 1-shot")
    end = time.monotonic() + 60
    while not (good / "learning_curve.png").is_file() and time.monotonic() < end:
        time.sleep(0.05)
    assert (good / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"

    bad = tmp_path / "bad"
    _run_folder(bad, (good / "metrics.jsonl").read_text())
    (bad / "summary.json").write_text("{cut short")
    assert plots.main([str(bad), "title"]) == 1
    assert not (bad / "learning_curve.png").exists()
    assert "learning_curve.png was not drawn" in (bad / "train.log").read_text()
    gone = tmp_path / "gone"
    assert plots.main([str(gone), "title"]) == 1 and not gone.exists()  # nothing is made where the run was


PROGRAM = """
import atexit, sys
from metalearn.cli import console_script

@console_script
def main():
    atexit.register(lambda: print("exit handler ran", file=sys.stderr))
    print("buffered, no newline", end="")
    if sys.argv[1] == "return":
        return None
    sys.exit(int(sys.argv[1]) if sys.argv[1].isdigit() else sys.argv[1])

if __name__ == "__main__":
    sys.exit(main())
"""


@pytest.mark.parametrize("arg,status,stderr", [("return", 0, ""), ("0", 0, ""), ("3", 3, ""),
                                                ("no such run", 1, "no such run")])
def test_a_console_script_ends_its_process_as_the_interpreter_would(tmp_path, arg, status, stderr):
    """end_process skips tearing modules down, not what an exit owes: the status, flushed output, the exit
    handlers."""
    (tmp_path / "prog.py").write_text(textwrap.dedent(PROGRAM))
    r = subprocess.run([sys.executable, "prog.py", arg], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == status, r.stderr
    assert r.stdout == "buffered, no newline"
    assert "exit handler ran" in r.stderr and stderr in r.stderr


def test_a_python_caller_of_main_keeps_its_process(tmp_path):
    """main() called from other Python (not __main__) returns, and leaves HYDRA_FULL_ERROR as it was: set
    only while Hydra composes, so that a bad command line can be explained in one line."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    code, text = run_main("metalearn-train", "stepz=3", cwd=tmp_path)
    assert code == 2 and "stepz is not a key (did you mean steps?)" in text
    assert os.environ.get("HYDRA_FULL_ERROR") == before
    code, text = run_main("metalearn-train", "steps=abc", cwd=tmp_path)
    assert code == 2 and text.count("error:") == 1 and "steps" in text
    assert os.environ.get("HYDRA_FULL_ERROR") == before and not (tmp_path / "outputs").exists()
