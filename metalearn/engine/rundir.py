"""A run's folder: resolved config, metrics.jsonl, summary.json, checkpoints/, eval/, plot."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import asdict, is_dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from metalearn.console import log
from metalearn.errors import MetalearnError
from metalearn.files import write_text


@lru_cache(maxsize=1)
def git_commit() -> dict:
    """The commit of the metalearn checkout in use (None when installed from a wheel)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": sha or None, "dirty": bool(dirty) if sha else None}


# The layout of a run folder, known here only. The record files are rewritten whole (metalearn.files); a killed
# write leaves `.<name>.<8 random characters>.tmp`, or `.<name>.tmp` from metalearn before 2026-12.
CONFIG, OVERRIDES, SUMMARY, METRICS = "config.yaml", "overrides.json", "summary.json", "metrics.jsonl"
LOG, PLOT, CHECKPOINTS, EVAL = "train.log", "learning_curve.png", "checkpoints", "eval"
RECORD_FILES = (CONFIG, OVERRIDES, SUMMARY, METRICS)
ORPHAN = re.compile(r"^\.(?P<name>.+?)(\.[a-z0-9_]{8})?\.tmp$")


LOCK_FILE = ".metalearn.lock"  # the writer's lock: pid, host, command and since when, as JSON
_HELD: dict[str, list] = {}  # resolved folder -> [lock file descriptor, nesting count], in this process


class FolderHeld(MetalearnError):
    """Another live process writes this run folder."""


def _holder(lock: Path) -> dict:
    try:
        holder = json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, since {holder.get('since', '?')}: "
            f"{holder.get('command') or 'a metalearn command'}")


def _write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str))


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl's records; a last line a kill cut short is left out."""
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _step_of(line: str) -> float:
    """A metrics record's step; a line a kill cut short (only ever the last) counts as after every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class RunFolder:
    def __init__(self, path: str | Path, read_only: bool = False, resume_dir: str | Path | None = None):
        """read_only: the folder of another process (rank 0 of a distributed run): read, never written.
        resume_dir: the folder `resume=true run_dir=` names to continue this one (a stage's run; default: itself)."""
        self.path, self.read_only = Path(path), read_only
        self.resume_dir = Path(resume_dir) if resume_dir is not None else self.path
        if not read_only:
            self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / METRICS
        self.summary_path, self.config_path = self.path / SUMMARY, self.path / CONFIG
        self.took_over: str | None = None  # hold(): the dead holder whose lock this process took over

    def checkpoint(self, name: str) -> Path:
        return self.path / CHECKPOINTS / f"{name}.pt"

    def weights(self, name: str = "best") -> Path:
        """The checkpoint that `checkpoint=<name>` reads: `best`, or `last` where there is no best (a run without
        validation keeps only `last`). The one place this rule is written."""
        if name not in ("best", "last"):
            raise MetalearnError(f"checkpoint={name!r} is not one of: best, last")
        best = self.checkpoint("best")
        return best if name == "best" and best.is_file() else self.checkpoint("last")

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL

    @property
    def log_file(self) -> Path:
        return self.path / LOG

    @property
    def plot_file(self) -> Path:
        return self.path / PLOT

    def write_record(self, name: str, data: dict) -> Path:
        """A JSON record of this project's beside the run's own (reproduction.json), written whole."""
        path = self.path / name
        if not self.read_only or str(self.path.resolve()) in _HELD:
            _write_json(path, data)
        return path

    def is_run(self) -> bool:
        """Whether the folder holds a metalearn run (its config)."""
        return self.config_path.is_file()

    def artifacts(self, checkpoints: bool = False) -> list[Path]:
        """What a tracker stores of the run: its record files, the log and the plot, eval/, and checkpoints/ on
        request."""
        files = [self.path / n for n in (*RECORD_FILES, LOG, PLOT) if (self.path / n).is_file()]
        return files + [self.path / d for d in ((EVAL, CHECKPOINTS) if checkpoints else (EVAL,)) if (self.path / d).is_dir()]

    def hold(self) -> None:
        """Become the folder's one writer: an OS lock on LOCK_FILE (flock), which the OS releases when this process
        ends, however it ends (SIGKILL too). A folder another live process holds is refused in one line naming it;
        a lock file left by a dead process is taken over, and that is logged. Re-entrant within one process."""
        import fcntl

        key = str(self.path.resolve())
        if key in _HELD:
            _HELD[key][1] += 1
            return
        lock = self.path / LOCK_FILE
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise self._held_error() from None
        previous = _holder(lock)
        if previous.get("pid") not in (None, os.getpid()):
            self.took_over = f"took over the lock of {self.path}: {_describe(previous)}, which no longer runs"
            log.info("%s", self.took_over)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                                  "since": dt.datetime.now().isoformat(timespec="seconds")}).encode(), 0)
        _HELD[key] = [fd, 1]

    def refuse_if_held(self) -> None:
        """Refuse, creating nothing, a folder another live process holds (checked before a start's other checks, so
        its message names the live writer rather than what that writer has written so far)."""
        import fcntl

        lock = self.path / LOCK_FILE
        if str(self.path.resolve()) in _HELD or not lock.is_file():
            return
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise self._held_error() from None
        finally:
            os.close(fd)

    def _held_error(self) -> FolderHeld:
        holder = _holder(self.path / LOCK_FILE)
        return FolderHeld(
            f"{self.path} is being written by another live process ({_describe(holder)}); two writers would "
            f"interleave their records. Wait for it to end, or stop it (kill {holder.get('pid', '<pid>')}) and "
            f"then continue the run with `metalearn-train resume=true run_dir={self.resume_dir}`.")

    def release(self) -> None:
        """Give up what hold() took (the last of nested holds closes the lock file, which unlocks it)."""
        held = _HELD.get(str(self.path.resolve()))
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:  # emptied first: a lock file that still names a holder was left by a process that died
            os.ftruncate(held[0], 0)
            os.close(held[0])
            del _HELD[str(self.path.resolve())]

    def write_config(self, cfg: DictConfig, overrides: list[str], choices: dict) -> None:
        if self.read_only:
            return
        write_text(self.config_path, OmegaConf.to_yaml(cfg, resolve=True))
        _write_json(self.path / OVERRIDES, {"overrides": overrides, "choices": choices})

    def recorded_overrides(self) -> dict:
        """overrides.json: the command line's overrides and Hydra's group choices."""
        p = self.path / OVERRIDES
        return {"overrides": [], "choices": {}, **(json.loads(p.read_text()) if p.exists() else {})}

    def saved_config(self) -> DictConfig:
        """config.yaml, with keys renamed since it was written under their new names."""
        from metalearn.config import migrate_saved_config

        saved = OmegaConf.to_container(OmegaConf.load(self.config_path))
        return OmegaConf.create(migrate_saved_config(saved))

    def append_metrics(self, record: dict) -> None:
        if self.read_only:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drop records written after the checkpoint a resumed run restarts from."""
        if self.read_only:
            return
        if not self.metrics_path.exists():
            return
        keep = [line for line in self.metrics_path.read_text().splitlines() if _step_of(line) <= step]
        write_text(self.metrics_path, "".join(line + "\n" for line in keep))

    def summary(self) -> dict:
        return json.loads(self.summary_path.read_text()) if self.summary_path.exists() else {}

    def remove_if_empty(self) -> None:
        """Remove the folder when it holds nothing but this project's lock file (a folder this process made for a
        start that was then refused)."""
        if not self.path.is_dir() or any(p.name != LOCK_FILE for p in self.path.iterdir()):
            return
        (self.path / LOCK_FILE).unlink(missing_ok=True)
        self.path.rmdir()

    def foreign_entries(self) -> list[str]:
        """What is in the folder that no metalearn run wrote (empty for a new, empty or metalearn run folder)."""
        if not self.path.is_dir() or self.config_path.is_file() or self.summary_path.is_file():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name != LOCK_FILE)

    def remove_orphans(self) -> list[Path]:
        """Temporary files of writes a kill interrupted, in the run folder, checkpoints/ and eval/: only names
        this project's writers make (ORPHAN, of a file they write), so a user's file is never matched. The
        finished file each was replacing is intact."""
        if self.read_only:
            return []
        removed = []
        for folder in (self.path, self.path / CHECKPOINTS, self.path / EVAL):
            for p in folder.glob(".*.tmp") if folder.is_dir() else []:
                m = ORPHAN.match(p.name)
                ours = m and (m["name"] in (*RECORD_FILES, PLOT) or folder != self.path)
                if ours and p.is_file():
                    p.unlink()
                    removed.append(p)
        if removed:
            log.info("removed %d unfinished temporary file(s) of a killed write: %s",
                                                len(removed), ", ".join(p.name for p in removed))
        return removed

    def write_summary(self, cfg: DictConfig, status: str, state: Any = None, test: dict | None = None,
                      device: str | None = None, init: dict | None = None, error: str | None = None,
                      processes: dict | None = None) -> dict:
        s = self.summary()
        now = dt.datetime.now().isoformat(timespec="seconds")
        choices = self.recorded_overrides()
        s.update({"status": status, "method": cfg.method.name, "dataset": cfg.dataset.name,
                  "method_config": OmegaConf.to_container(cfg.method, resolve=True),
                  "task": {"ways": cfg.ways, "shots": cfg.shots, "queries": cfg.queries,
                           "train_ways": cfg.sampler.train_ways, "train_shots": cfg.sampler.train_shots,
                           "train_queries": cfg.sampler.train_queries, "meta_batch": cfg.sampler.meta_batch},
                  "seed": cfg.seed, "steps": cfg.steps, "tags": list(cfg.get("tags") or []),
                  "notes": cfg.get("notes") or "", "choices": choices["choices"],
                  "overrides": choices["overrides"], **git_commit(), "updated": now})
        s.setdefault("started", now)
        if device:
            s["device"] = device
        if state is not None:
            st = asdict(state) if is_dataclass(state) else dict(state)
            s.update({"steps_done": st["step"], "wall_time_s": round(st["elapsed"], 1),
                      "final_train": st["last_train"], "final_val": st["last_val"] or None,
                      "best_val": ({"step": st["best_step"], "accuracy": st["best_val"], "ci95": st["best_ci95"]}
                                   if st["best_step"] >= 0 else None)})
        if test is not None:
            s["test"] = test
        if processes is not None:  # under torchrun: world size, backend, each rank's device (kept by later writes)
            s["ranks"] = processes
        if init is not None:  # which weights the run started from (kept by later writes)
            s["init"] = init
        if error is not None:
            s["error"] = error
        elif status in ("running", "completed"):
            s.pop("error", None)
        if status == "running":  # who runs it: a report tells a live run from a killed one by these
            s["process"] = {"pid": os.getpid(), "host": socket.gethostname(), "started": now}
        if not self.read_only:
            _write_json(self.summary_path, s)
        return s


def find_resumable(outputs: Path, task: str = "train") -> Path | None:
    """The newest run under outputs/<task>/ that has a last checkpoint and did not complete."""
    runs = sorted((outputs / task).glob(f"*/*/{CHECKPOINTS}/last.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for ckpt in runs:
        run = ckpt.parent.parent
        try:
            status = json.loads((run / SUMMARY).read_text()).get("status")
        except (OSError, ValueError):
            status = None
        if status != "completed":
            return run
    return None


def observed_status(summary: dict) -> str:
    """summary.json's status, except that a `running` run whose process is gone is `killed`: SIGKILL (or a
    lost machine) lets a run write nothing, so its last word stays `running`. Only a process on this host
    can be checked; a run elsewhere keeps `running`."""
    status = summary.get("status", "?")
    proc = summary.get("process") or {}
    if status != "running" or proc.get("host") != socket.gethostname() or not isinstance(proc.get("pid"), int):
        return status
    pid = proc["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "killed"
    except PermissionError:  # alive, another user's
        return status
    stat, cmdline = Path(f"/proc/{pid}/stat"), Path(f"/proc/{pid}/cmdline")
    try:  # a zombie (killed, not yet reaped), or the pid reused by a process that is not metalearn
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z" or b"metalearn" not in cmdline.read_bytes():
            return "killed"
    except (OSError, IndexError):
        pass
    return status
