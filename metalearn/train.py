"""`metalearn-train`: meta-train a method on a dataset, then test it on fixed episodes.

    metalearn-train                                  # protonet on the built-in synthetic glyphs, CPU
    metalearn-train method=protonet shots=5 dataset=omniglot dataset.root=PATH
    metalearn-train -m shots=1,5 seed=0,1,2          # a sweep: one folder per job
    metalearn-train resume=true [run_dir=PATH]       # continue a killed run
    metalearn-train resume=true run_dir=PATH steps=N # train a run further (constant or step schedule)
    metalearn-train resume=true run_dir=PATH hardware.threads=1   # resume on fewer (or more) CPU threads
    metalearn-train ... max_minutes=230              # stop (checkpointed, exit 124) before a 4-hour job limit

Torch is imported inside main() so that --help answers fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from metalearn.cli import console_script
from metalearn.config import config_dir, register
from metalearn.help import answer_help

if TYPE_CHECKING:
    from metalearn.engine.rundir import RunFolder

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


def refuse_to_overwrite(folder: RunFolder, run_dir: str | None) -> None:
    """A new run never starts in a folder that holds another run's checkpoint: it would overwrite it
    (and its metrics) from step 0, where the user most likely meant to continue it."""
    from metalearn.engine.checkpoint import load_checkpoint
    from metalearn.errors import MetalearnError

    if not folder.checkpoint("last").is_file():
        return
    status = folder.summary().get("status", "unfinished")
    try:
        ckpt = load_checkpoint(folder.checkpoint("last"))
        held = f"a {status} run of {ckpt['config']['method']['name']} (checkpoint at step {ckpt['step']})"
    except (MetalearnError, KeyError, TypeError):
        held = f"a {status} run"
    raise MetalearnError(
        f"run_dir={run_dir} already holds {held}. A new run "
        f"would overwrite it. Continue it with `metalearn-train resume=true run_dir={run_dir}`, start the new "
        f"run in another folder (a new run_dir=, or none for a fresh folder under outputs/train/), or delete "
        f"{folder.path} first to start over there.")


# Where and how long a run computes, not what it computes: these may change when it resumes (threads change
# float rounding at most; the device, autocast or memory layout would change the numbers, so they stay refused).
RESUME_SETTABLE = ("hardware.threads", "hardware.keep_freed_memory", "max_minutes")


def apply_resume_overrides(saved: DictConfig, cfg: DictConfig, overrides: list[str], folder: RunFolder) -> None:
    """A resumed run is its saved config.yaml; of the command line's overrides only `steps=` (to train a run,
    a finished one too, further) and RESUME_SETTABLE apply, and are written to config.yaml so a later resume
    keeps them. Why refuse the rest by name: they used to be ignored without a word, and a changed dataset or
    method would make the checkpoint another experiment."""
    from metalearn.engine.checkpoint import load_checkpoint
    from metalearn.errors import MetalearnError

    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    ignored = [o for o, k in zip(overrides, keys, strict=True)
               if k not in ("resume", "run_dir", "steps", *RESUME_SETTABLE)]
    if ignored:
        raise MetalearnError(
            f"resume=true continues the run with its saved config ({folder.path / 'config.yaml'}), so "
            f"{', '.join(ignored)} would not apply. Only steps= (to train further) and {', '.join(RESUME_SETTABLE)} "
            f"may change on resume. For other settings start a new run (a new run_dir=, or none), with "
            f"init.run={folder.path} to start from this run's weights; or edit that config.yaml if the change keeps "
            f"the experiment the same (a moved dataset.root).")
    changed = {k: o for o, k in zip(overrides, keys, strict=True)
               if k in RESUME_SETTABLE and OmegaConf.select(saved, k) != OmegaConf.select(cfg, k)}
    if "steps" in keys and cfg.steps != saved.steps:
        if saved.schedule.name in ("cosine", "linear"):
            raise MetalearnError(
                f"steps={cfg.steps}: this run's schedule.name={saved.schedule.name} is laid out over its "
                f"steps={saved.steps}, so training it further would not be the run a steps={cfg.steps} run is. "
                f"Start a new run with steps={cfg.steps}.")
        done = int(load_checkpoint(folder.checkpoint("last"))["step"])
        if cfg.steps < done:
            raise MetalearnError(f"steps={cfg.steps} is below this run's checkpoint at step {done}; "
                                 f"give steps >= {done}.")
        changed["steps"] = f"steps={cfg.steps}"
    if not changed:
        return
    for key in changed:
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key), merge=False)
    recorded = folder.recorded_overrides()
    kept = [o for o in recorded["overrides"] if o.split("=", 1)[0].lstrip("+~") not in changed]
    folder.write_config(saved, kept + [o.lstrip("+~") for o in changed.values()], recorded["choices"])


def check_run_folder(out: Path, cfg: DictConfig) -> None:
    """Before anything is written: resume=true needs a checkpoint, and a new run needs a folder that is empty,
    new, or a metalearn run that never checkpointed. A folder this process made for a refused resume is removed
    again; anything else (a user's folder, even an empty one) is left exactly as it was."""
    from metalearn.engine.checkpoint import load_checkpoint
    from metalearn.engine.rundir import RunFolder
    from metalearn.errors import MetalearnError

    if out.exists() and not out.is_dir():
        raise MetalearnError(f"run_dir={cfg.run_dir} is a file, not a folder; give a new or empty folder")
    folder = RunFolder(out, read_only=True)
    if cfg.resume:
        if folder.checkpoint("last").is_file():
            load_checkpoint(folder.checkpoint("last"))  # refused now, before this process writes to the folder
            return
        from metalearn.engine.stages import stage_folder

        if stage_folder(out).checkpoint("last").is_file():  # stopped in its pre-training stage
            return
        made_here = not RUN_DIR_EXISTED.get(str(out.absolute()), True) or cfg.run_dir is None
        if made_here and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        where = f"in {cfg.run_dir}" if cfg.run_dir else "under outputs/train/ (no unfinished run found)"
        raise MetalearnError(f"resume=true but there is no checkpoint to resume {where}. Give the run's "
                             f"folder with run_dir=PATH, or start a new run without resume=true.")
    refuse_to_overwrite(folder, cfg.run_dir)
    foreign = folder.foreign_entries()
    if foreign:
        raise MetalearnError(
            f"run_dir={cfg.run_dir} already holds files that no metalearn run wrote ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); a run there would write among them. Give a new or empty folder.")


def run(cfg: DictConfig) -> dict | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from metalearn.cli import record_failure, report_errors, setup_logging
    from metalearn.engine.rundir import RunFolder

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    ranks = _join_ranks(cfg)
    if not ranks.main:  # under torchrun: rank 0's folder for everyone, written by rank 0 alone
        own, out = out, Path(broadcast_path(str(out), ranks))
        if own != out and own.is_dir() and not any(own.iterdir()):
            own.rmdir()
    else:
        broadcast_path(str(out), ranks)
    setup_logging(None, quiet=not ranks.main)
    started: list[tuple[RunFolder, DictConfig]] = []  # once this process owns the folder, every failure is recorded

    def go() -> dict:
        from metalearn.engine.trainer import train

        if ranks.main:
            check_run_folder(out, cfg)
        folder = RunFolder(out, read_only=not ranks.main)
        if cfg.resume:
            saved = folder.saved_config()
            apply_resume_overrides(saved, cfg, list(hc.overrides.task), folder)
            saved.resume = True
        if ranks.main:  # checks passed: from here the run folder is this process's, and so is its log
            setup_logging(out / "train.log")
        folder.remove_orphans()
        if not cfg.resume:
            folder.write_config(cfg, list(hc.overrides.task), dict(hc.runtime.choices))
        run_cfg = saved if cfg.resume else cfg
        started.append((folder, run_cfg))
        group = str(hc.sweep.dir) if multirun else None
        if (run_cfg.get("pretrain") or {}).get("experiment"):  # stage 1 in <run>/pretrain, then this run from it
            from metalearn.engine.stages import run_pretraining

            overrides = folder.recorded_overrides()["overrides"] if cfg.resume else list(hc.overrides.task)
            run_cfg = run_pretraining(run_cfg, folder, overrides, group)
        return train(run_cfg, folder, group=group)

    try:
        return report_errors(go, multirun=multirun,
                             on_error=lambda e: record_failure(*started[0], e) if started else None)
    except Exception:
        if not started:  # before the run folder was this process's: nothing recorded it, keep the traceback
            raise
        if multirun:  # a crashed job is recorded (and its traceback logged) and the sweep goes on
            return None
        sys.exit(1)  # the traceback is in the log and train.log, the reason in summary.json


def _join_ranks(cfg: DictConfig):
    """The process group of a torchrun launch (a single rank otherwise)."""
    import torch

    from metalearn.engine.distributed import init_from_env

    return init_from_env(torch.device("cuda" if str(cfg.hardware.device).startswith("cuda") else "cpu"))


def broadcast_path(path: str, ranks) -> str:
    from metalearn.engine.distributed import broadcast_path as broadcast

    return broadcast(path, ranks)


def _stop_on_sigterm() -> None:
    """SIGTERM (a scheduler's pre-emption, `kill`) stops a run as Ctrl-C does: summary.json says
    'interrupted' and the last checkpoint stays for resume=true."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


@hydra.main(version_base=None, config_path=config_dir(), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from metalearn.preflight import task_started

    task_started()
    _stop_on_sigterm()
    return objective(run(cfg))


def objective(summary: dict | None) -> float | None:
    """What a hyperparameter search (search=<family>, the Optuna sweeper) maximises: the run's best
    validation accuracy. A failed job returns None, which the sweeper records as a failed trial (its
    own failure handling, `max_failure_rate` in configs/search/); summary.csv marks it failed too."""
    if summary is None:
        return None
    best = summary.get("best_val") or {}
    if "accuracy" not in best:
        from hydra.core.hydra_config import HydraConfig

        from metalearn.cli import report_errors
        from metalearn.errors import MetalearnError

        if HydraConfig.get().runtime.choices.get("hydra/sweeper") == "optuna":  # stop the search: all would fail
            report_errors(lambda: _raise(MetalearnError(
                "the search maximises validation accuracy, but this run has none: its dataset has no validation "
                "split or val.every=0. Give it one (e.g. dataset.alphabets.val=[Greek] for omniglot_small).")))
        return float("nan")
    return float(best["accuracy"])


def _raise(e: Exception):
    raise e


@console_script
def main() -> None:
    """The console script: --help answered fast (metalearn.help), everything else by Hydra."""
    if not answer_help("metalearn-train", "train", __doc__ or ""):
        from metalearn.errors import TimeLimitReached
        from metalearn.preflight import run_checked

        try:
            run_checked(sys.argv[1:], "train", _hydra_main)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the run said where it stopped; no traceback
            sys.exit(130)
        except TimeLimitReached:  # max_minutes: likewise, with timeout(1)'s status for a requeueing script
            sys.exit(TimeLimitReached.exit_status)


if __name__ == "__main__":
    main()
