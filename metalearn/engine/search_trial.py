"""A search trial's validation reports, for pruning (`hydra.sweeper.pruner.name=median|hyperband`).

The sweeper (hydra_plugins/metalearn_search) tells each job which Optuna trial it is through the job's
environment (`hydra.job.env_set`), so any launcher carries it: the study's storage and name and the trial's id.
At every validation the trainer reports the accuracy at its step; when the study's pruner says the trial is
worse than the others were at that step, the run stops there (checkpointed, status `pruned`, no test) and the
sweeper records the trial as pruned. An in-memory study (no storage) is reachable only inside the sweeper's
process, i.e. with the default local launcher; with other launchers pruning needs `hydra.sweeper.storage`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger("metalearn")

STORAGE, STUDY, TRIAL = "METALEARN_SEARCH_STORAGE", "METALEARN_SEARCH_STUDY", "METALEARN_SEARCH_TRIAL"
MEMORY = "memory"
IN_PROCESS: dict[int, Any] = {}  # trial id -> optuna Trial of an in-memory study, set by the sweeper


def storage_of(url: str | None) -> Any:
    """None, an SQLAlchemy URL, or Optuna's journal file storage for `journal:///path` (no server needed)."""
    if url is None or not url.startswith("journal://"):
        return url
    from pathlib import Path

    import optuna

    path = Path(url.removeprefix("journal://")).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


class TrialPruned(Exception):
    """The study's pruner stopped this trial at a validation step."""

    def __init__(self, step: int):
        super().__init__(f"pruned at step {step}")
        self.step = step


def reporter() -> Callable[[int, float], bool] | None:
    """report(step, accuracy) -> whether the trial should stop, for a run the sweeper launched with pruning;
    None for any other run."""
    trial_id = os.environ.get(TRIAL)
    if not trial_id:
        return None
    trial = IN_PROCESS.get(int(trial_id))
    if trial is None and os.environ.get(STORAGE, MEMORY) != MEMORY:
        import optuna

        study = optuna.load_study(study_name=os.environ[STUDY], storage=storage_of(os.environ[STORAGE]))
        trial = optuna.trial.Trial(study, int(trial_id))
    if trial is None:
        log.warning("pruning needs hydra.sweeper.storage when the trials run in other processes; this one is "
                    "not pruned")
        return None

    def report(step: int, accuracy: float) -> bool:
        trial.report(accuracy, step)
        return trial.should_prune()

    return report
