"""One writer per run folder: a second train, resume or eval into a live run is refused in one line naming the
live process, and the live run's records stay its own; a lock left by a killed process is taken over. Also the
lock itself (re-entrant in one process, emptied on release) and predict/export replacing only their own files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metalearn.engine.rundir import LOCK_FILE, FolderHeld, RunFolder
from metalearn.errors import MetalearnError


def start(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "metalearn.train", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def finish(*args: str, tool: str = "metalearn.train", cwd: Path) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", tool, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def wait_running(run: Path, proc: subprocess.Popen, checkpointed: bool = False) -> None:
    """Until the run's summary says running (and, if asked, its first checkpoint is written)."""
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        summary = run / "summary.json"
        if summary.is_file() and json.loads(summary.read_text()).get("status") == "running" and (
                not checkpointed or (run / "checkpoints" / "last.pt").is_file()):
            return
        time.sleep(0.05)
    raise AssertionError("the first run never started")


def steps_of(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "train"]


@pytest.mark.e2e
def test_a_second_writer_is_refused_and_a_killed_writers_lock_is_taken_over(tmp_path):
    first = start("debug=smoke", "steps=100000", "checkpoint_every=10", "log_every=5", "val.every=50",
                  "hardware.threads=1", "run_dir=run", cwd=tmp_path)
    run = tmp_path / "run"
    try:
        wait_running(run, first, checkpointed=True)
        for args, tool in [(["debug=smoke", "run_dir=run"], "metalearn.train"),
                           (["resume=true", "run_dir=run"], "metalearn.train"),
                           (["run=run", "checkpoint=last", "episodes=5"], "metalearn.eval")]:
            code, text = finish(*args, tool=tool, cwd=tmp_path)
            errors = [line for line in text.splitlines() if "error:" in line]
            assert code == 2 and len(errors) == 1 and "Traceback" not in text, text
            assert f"is being written by another live process (pid {first.pid} on host" in errors[0], errors[0]
        assert first.poll() is None  # the live run went on
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "running" and summary["process"]["pid"] == first.pid
        assert not (run / "eval").exists()  # the refused eval wrote no result
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    steps = steps_of(run)
    assert steps == sorted(set(steps)) and steps[0] == 5  # one writer's records: no step twice, none interleaved
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == first.pid  # a killed writer's lock names it

    done = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    code, text = finish("resume=true", "run_dir=run", f"steps={done}", cwd=tmp_path)  # the next start takes over
    assert code == 0, text
    assert f"took over the lock of {run}: pid {first.pid}" in text
    assert f"pid {first.pid}" in (run / "train.log").read_text()  # the takeover is in the run's own log too
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert (run / LOCK_FILE).read_text() == ""  # released: a lock file that names nobody


def test_the_lock_is_reentrant_in_one_process_and_refuses_another(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.hold()
    folder.hold()  # nested: the trainer's and the stage's hold, say
    holder = json.loads((folder.path / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and "since" in holder and "host" in holder
    probe = ("import sys; from metalearn.engine.rundir import RunFolder, FolderHeld\n"
             "try:\n    RunFolder(sys.argv[1]).hold()\nexcept FolderHeld as e:\n    print(e); sys.exit(3)\n")
    other = subprocess.run([sys.executable, "-c", probe, str(folder.path)], capture_output=True, text=True)
    assert other.returncode == 3 and f"pid {os.getpid()}" in other.stdout
    folder.release()
    assert (folder.path / LOCK_FILE).read_text() != ""  # still held once
    folder.release()
    assert (folder.path / LOCK_FILE).read_text() == ""
    again = subprocess.run([sys.executable, "-c", probe, str(folder.path)], capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert issubclass(FolderHeld, MetalearnError)


def test_a_refused_start_leaves_a_users_folder_as_it_was(tmp_path):
    """The lock is taken only after the folder passed its checks: a user's folder gets no lock file."""
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    code, text = finish("debug=smoke", "run_dir=user", cwd=tmp_path)
    assert code == 2 and "already holds files that no metalearn run wrote (notes.txt)" in text, text
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]


def test_files_a_run_writes_get_the_users_umask_not_private_modes(tmp_path):
    """Trap (issue 60): config.yaml, summary.json and checkpoints were 0600 while metrics.jsonl was 0644, so a run
    folder shared with a colleague was half unreadable. Every file now gets 0666 less the umask."""
    import os
    import stat

    from metalearn.files import write_csv, write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "summary.json", "{}")
        write_csv([{"a": 1}], tmp_path / "leaderboard.csv")
        os.umask(0o077)
        write_text(tmp_path / "private.json", "{}")
    finally:
        os.umask(old)
    mode = lambda name: stat.S_IMODE((tmp_path / name).stat().st_mode)  # noqa: E731
    assert mode("summary.json") == 0o644 and mode("leaderboard.csv") == 0o644
    assert mode("private.json") == 0o600  # a user who asks for privacy keeps it

