"""Experiment trackers (`logger=tensorboard`, `logger=[mlflow,wandb]`, `logger=many`): each a file in this
package that registers a `Tracker` under its name. metrics.jsonl stays the run's record; a tracker gets
a copy of what the run writes: the resolved config as hyperparameters, the tags, every training and
validation record by step, every test setting's accuracy with its interval, and, at the end, the
run folder's files as artifacts where the tracker keeps artifacts.

Why the trackers' own libraries are optional extras (`pip install -e ".[mlflow]"`): each is large
(MLflow brings a web server and a database layer, W&B a service binary), and a run that logs to
none of them must not pay for their import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from metalearn.errors import MetalearnError, installed
from metalearn.registry import LOGGERS

log = logging.getLogger("metalearn")


@dataclass
class RunInfo:
    """What every tracker is told about the run when it starts."""

    folder: Path
    name: str  # the run folder's name
    config: dict[str, Any]  # the resolved config
    tags: list[str] = field(default_factory=list)
    notes: str = ""
    group: str | None = None  # the sweep a job belongs to (its folder), None for a single run
    # what the tracker stores of the run at its end: checkpoints too or not -> the files and folders (RunFolder's)
    artifacts: Callable[[bool], list[Path]] = lambda checkpoints: []


class Tracker:
    """A tracker's hooks; each does nothing unless the tracker overrides it."""

    def log_metrics(self, record: dict) -> None:
        """One metrics.jsonl record: {"kind": "train" | "val", "step": n, ...numbers}."""

    def log_test(self, results: dict[str, dict]) -> None:
        """The test settings' results: tag -> {"accuracy", "ci95", "episodes", ...}."""

    def finish(self, status: str) -> None:
        """The run ended with `status` (completed, failed, diverged, interrupted); upload and close."""


def require(package: str, logger: str, extra: str | None = None) -> None:
    """A clear error when a tracker's library is missing, naming the extra that installs it."""
    if not installed(package):
        raise MetalearnError(f"logger={logger} needs the {package} package, which is not installed; install it with "
                             f"pip install -e \".[{extra or logger}]\" (or pip install {package})")


def numbers(record: dict) -> dict[str, float]:
    """The numeric entries of a record, without its step, kind and wall time."""
    return {k: float(v) for k, v in record.items()
            if k not in ("step", "kind", "time") and isinstance(v, int | float) and not isinstance(v, bool)}


def flat(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"method": {"name": "maml"}} -> {"method.name": "maml"}: hyperparameters as trackers list them."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat(v, key + "."))
        else:
            out[key] = v
    return out


def check_schema(name: str, cfg: Any, schema: type) -> Any:
    """A tracker's config on its typed schema: an unknown key or a wrong type is one clear error."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg or {}))
    except Exception as e:  # omegaconf's ValidationError / ConfigKeyError
        raise MetalearnError(f"logger.{name}: {str(e).splitlines()[0]}") from None


class Trackers(Tracker):
    """Every tracker the run's `logger` group chose, called in turn; a tracker that fails while logging is
    reported once and dropped, so a tracker's outage never stops a training run."""

    def __init__(self, trackers: dict[str, Tracker]):
        self.trackers = trackers

    def _each(self, what: str, *args: Any) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                getattr(tracker, what)(*args)
            except Exception as e:  # noqa: BLE001 - a tracker's failure must not end the run
                log.warning("logger %s failed (%s: %s); it is dropped for the rest of the run", name,
                            type(e).__name__, e)
                self.trackers.pop(name)

    def log_metrics(self, record: dict) -> None:
        self._each("log_metrics", record)

    def log_test(self, results: dict[str, dict]) -> None:
        self._each("log_test", results)

    def finish(self, status: str) -> None:
        self._each("finish", status)
        self.trackers = {}


def open_trackers(cfg: DictConfig, folder: Path, group: str | None = None,
                  artifacts: Callable[[bool], list[Path]] | None = None) -> Trackers:
    """The trackers `cfg.logger` names (name -> that tracker's settings), started."""
    node = cfg.get("logger")
    chosen = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
    if not chosen:
        return Trackers({})
    config = OmegaConf.to_container(cfg, resolve=True)
    info = RunInfo(folder=Path(folder), name=Path(folder).name, config=config, tags=list(cfg.get("tags") or []),
                   notes=cfg.get("notes") or "", group=group, artifacts=artifacts or (lambda checkpoints: []))
    started: dict[str, Tracker] = {}
    for name, settings in chosen.items():
        started[name] = LOGGERS.builder(name)(settings or {}, info)
    log.info("logging to %s", ", ".join(started))
    return Trackers(started)
