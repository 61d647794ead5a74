"""`metalearn-train`: meta-train a method on a dataset, then test it on fixed episodes.

    metalearn-train                                  # protonet on the built-in synthetic glyphs, CPU
    metalearn-train method=protonet shots=5 dataset=omniglot dataset.root=PATH
    metalearn-train -m shots=1,5 seed=0,1,2          # a sweep: one folder per job
    metalearn-train resume=true [run_dir=PATH]       # continue a killed run
    metalearn-train resume=true run_dir=PATH steps=N # train a run further (constant or step schedule)
    metalearn-train resume=true run_dir=PATH hardware.threads=1   # resume on fewer (or more) CPU threads
    metalearn-train ... max_minutes=230              # stop (checkpointed, exit 124) before a 4-hour job limit
    metalearn-train method=maml --help               # every key of that configuration, with its meaning
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from metalearn.cli import console_script, report_errors
from metalearn.config import config_dir, register
from metalearn.errors import MetalearnError
from metalearn.help import answer_help

register()
# run_dir= values as first resolved, before Hydra creates the folder: whether each already existed, so a
# failed start removes only a folder this process made (never a user's own, even an empty one)
RUN_DIR_EXISTED: dict[str, bool] = {}


def _run_dir(run_dir: str | None, resume: bool, task: str, default: str) -> str:
    """hydra.run.dir: the given run_dir, else (resume=true) the newest unfinished run, else a new folder."""
    if run_dir:
        RUN_DIR_EXISTED.setdefault(str(Path(run_dir).absolute()), Path(run_dir).exists())
        return run_dir
    if resume:
        from metalearn.engine.rundir import find_resumable

        found = find_resumable(Path("outputs"), task)
        if found is not None:
            return str(found)
    return default


if not OmegaConf.has_resolver("metalearn.run_dir"):  # train.yaml's hydra.run.dir
    OmegaConf.register_new_resolver("metalearn.run_dir", _run_dir)


def run(cfg: DictConfig) -> dict | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from metalearn.engine.lifecycle import Launch, RunLife

    hc = HydraConfig.get()
    out, multirun = Path(hc.runtime.output_dir), hc.mode == RunMode.MULTIRUN
    made_here = cfg.run_dir is None or not RUN_DIR_EXISTED.get(str(out.absolute()), True)
    life = RunLife(cfg, Launch(out, list(hc.overrides.task), dict(hc.runtime.choices),
                               str(hc.sweep.dir) if multirun else None, made_here))
    if report_errors(life.check, multirun=multirun) is None:
        return None  # a sweep's job with a value out of range: logged, no folder, the sweep goes on
    try:
        return report_errors(life.run, multirun=multirun, on_error=life.record_failure)
    except Exception:
        if life.started is None:  # before the run folder was this process's: nothing recorded it, keep the traceback
            raise
        if multirun:  # a crashed job is recorded (and its traceback logged) and the sweep goes on
            return None
        sys.exit(1)  # the traceback is in the log and train.log, the reason in summary.json


@hydra.main(version_base=None, config_path=config_dir(), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from metalearn.engine.lifecycle import stop_on_sigterm
    from metalearn.preflight import task_started

    task_started()
    stop_on_sigterm()
    return objective(run(cfg))


def objective(summary: dict | None) -> float | str | None:
    """What a hyperparameter search (search=<family>, the Optuna sweeper) maximises: the run's best
    validation accuracy. A failed job returns None, which the sweeper records as a failed trial (its
    own failure handling, `max_failure_rate` in configs/search/); summary.csv marks it failed too."""
    if summary is None or summary.get("status") == "pruned":  # "pruned": the sweeper tells the study so
        return None if summary is None else "pruned"
    if "accuracy" not in (summary.get("best_val") or {}):
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.get().runtime.choices.get("hydra/sweeper") == "optuna_search":  # stop the search: all would fail
            def refuse():
                raise MetalearnError("the search maximises validation accuracy, but this run has none: its dataset has "
                                     "no validation split or val.every=0. Give it one (e.g. dataset.alphabets.val=[Greek] "
                                     "for omniglot_small).")
            report_errors(refuse)
        return float("nan")
    return float(summary["best_val"]["accuracy"])


@console_script
def main() -> None:
    """The console script: --help answered fast (metalearn.help, before torch), everything else by Hydra."""
    if not answer_help("metalearn-train", "train", __doc__ or ""):
        from metalearn.errors import TimeLimitReached
        from metalearn.preflight import run_checked

        flags = [a for a in sys.argv[1:] if a in ("-m", "--multirun")]  # Hydra takes them only before the overrides
        sys.argv[1:] = flags + [a for a in sys.argv[1:] if a not in flags]
        try:
            run_checked(sys.argv[1:], "train", _hydra_main)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the run said where it stopped; no traceback
            sys.exit(130)
        except TimeLimitReached:  # max_minutes: likewise, with timeout(1)'s status for a requeueing script
            sys.exit(TimeLimitReached.exit_status)


if __name__ == "__main__":
    main()
