"""A run's life: create or resume its folder, hold it (one writer at a time), run its stages (an optional
pre-training stage, then the run), draw its curve, and record how it ended.

The console script composes the config and says where the run goes (a Launch); everything after that is here,
so the rules for resuming, overwriting and recording a failure are written once and read from a notebook too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from metalearn.engine.rundir import RunFolder
from metalearn.errors import MetalearnError, TimeLimitReached, one_line

log = logging.getLogger("metalearn")

# Where and how long a run computes, not what it computes: these may change when it resumes (threads change
# float rounding at most; the device, autocast or memory layout would change the numbers, so they stay refused).
RESUME_SETTABLE = ("hardware.threads", "hardware.keep_freed_memory", "max_minutes")


@dataclass
class Launch:
    """Where a run goes and how it was asked for: what the entry point knows from its launcher (Hydra)."""

    out: Path  # the run folder
    overrides: list[str] = field(default_factory=list)  # the command line's overrides
    choices: dict = field(default_factory=dict)  # the config groups' chosen options
    group: str | None = None  # the sweep's folder, for a job of a sweep
    made_here: bool = False  # this process made `out` (so a refused start may remove it again)


def refuse_to_overwrite(folder: RunFolder, run_dir: str | None) -> None:
    """A new run never starts in a folder that holds another run's checkpoint: it would overwrite it
    (and its metrics) from step 0, where the user most likely meant to continue it."""
    from metalearn.engine.checkpoint import load_checkpoint

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


def apply_resume_overrides(saved: DictConfig, cfg: DictConfig, overrides: list[str], folder: RunFolder) -> None:
    """A resumed run is its saved config.yaml; of the command line's overrides only `steps=` (to train a run,
    a finished one too, further) and RESUME_SETTABLE apply, and are written to config.yaml so a later resume
    keeps them. Why refuse the rest by name: they used to be ignored without a word, and a changed dataset or
    method would make the checkpoint another experiment."""
    from metalearn.engine.checkpoint import load_checkpoint

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


def check_run_folder(folder: RunFolder, cfg: DictConfig) -> None:
    """Before anything is written: resume=true needs a checkpoint, and a new run needs a folder that is empty,
    new, or a metalearn run that never checkpointed."""
    from metalearn.engine.checkpoint import load_checkpoint
    from metalearn.engine.stages import stage_folder

    out = folder.path
    if out.exists() and not out.is_dir():
        raise MetalearnError(f"run_dir={cfg.run_dir} is a file, not a folder; give a new or empty folder")
    if cfg.resume:
        if folder.checkpoint("last").is_file():
            load_checkpoint(folder.checkpoint("last"))  # refused now, before this process writes to the folder
            return
        if stage_folder(out).checkpoint("last").is_file():  # stopped in its pre-training stage
            return
        where = f"in {cfg.run_dir}" if cfg.run_dir else "under outputs/train/ (no unfinished run found)"
        raise MetalearnError(f"resume=true but there is no checkpoint to resume {where}. Give the run's "
                             f"folder with run_dir=PATH, or start a new run without resume=true.")
    refuse_to_overwrite(folder, cfg.run_dir)
    foreign = folder.foreign_entries()
    if foreign:
        raise MetalearnError(
            f"run_dir={cfg.run_dir} already holds files that no metalearn run wrote ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); a run there would write among them. Give a new or empty folder.")


def stop_on_sigterm() -> None:
    """SIGTERM (a scheduler's pre-emption, `kill`) stops a run as Ctrl-C does: summary.json says
    'interrupted' and the last checkpoint stays for resume=true."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


class RunLife:
    """One training run from start to end. `run()` returns the summary; `record_failure(e)` writes any failure
    into the folder once the folder is this process's (before that nothing of this run is there to record in)."""

    def __init__(self, cfg: DictConfig, launch: Launch):
        self.cfg, self.launch = cfg, launch
        self.started: tuple[RunFolder, DictConfig] | None = None

    def check(self) -> bool:
        """What the command line asks for, checked and said before a run folder is claimed: every declared range
        (refused like an unknown key, leaving no folder) and a debug=smoke that a larger steps= overrides."""
        from metalearn.console import setup_logging

        setup_logging(None)  # the run's own log file comes with its folder, once the config is known to be valid
        warn_smoke_overridden(self.launch.choices, self.launch.overrides)
        return check_ranges(self.cfg, RunFolder(self.launch.out), self.launch.made_here)

    def run(self) -> dict:
        import torch

        from metalearn.console import setup_logging
        from metalearn.engine.distributed import broadcast_path, init_from_env

        cfg, launch = self.cfg, self.launch
        ranks = init_from_env(torch.device("cuda" if str(cfg.hardware.device).startswith("cuda") else "cpu"))
        out = Path(broadcast_path(str(launch.out), ranks))  # under torchrun: rank 0's folder, written by rank 0 alone
        if out != launch.out and launch.out.is_dir() and not any(launch.out.iterdir()):
            launch.out.rmdir()
        setup_logging(None, quiet=not ranks.main)
        folder = RunFolder(out, read_only=not ranks.main)
        try:
            return self._run(folder, ranks.main)
        finally:
            folder.release()

    def _run(self, folder: RunFolder, main: bool) -> dict:
        from metalearn.console import setup_logging

        cfg, launch = self.cfg, self.launch
        if main:
            try:
                folder.refuse_if_held()  # a live writer is named first; then the checks, before anything is
                check_run_folder(folder, cfg)  # written, so a refused start leaves no lock file
                folder.hold()
                if not cfg.resume:  # again, now that no other process writes the folder: one may have just finished
                    check_run_folder(folder, cfg)
            except MetalearnError:  # a folder this process made for a refused start is removed again; anything
                folder.release()  # else (a user's folder, even an empty one) is left exactly as it was
                if launch.made_here:
                    folder.remove_if_empty()
                raise
        run_cfg = cfg
        if cfg.resume:
            run_cfg = folder.saved_config()
            apply_resume_overrides(run_cfg, cfg, launch.overrides, folder)
            run_cfg.resume = True
        if main:  # checks passed: from here the run folder is this process's, and so is its log
            setup_logging(folder.log_file)
            if folder.took_over:
                log.info("%s", folder.took_over)
        folder.remove_orphans()
        if not cfg.resume:
            folder.write_config(cfg, launch.overrides, launch.choices)
        self.started = (folder, run_cfg)
        if (run_cfg.get("pretrain") or {}).get("experiment"):  # stage 1 in <run>/pretrain, then this run from it
            overrides = folder.recorded_overrides()["overrides"] if cfg.resume else launch.overrides
            run_cfg = self.pretrain(run_cfg, folder, overrides)
        return train_and_draw(run_cfg, folder, launch.group)

    def pretrain(self, cfg: DictConfig, folder: RunFolder, overrides: list[str]) -> DictConfig:
        """Run, resume or skip the pre-training stage; returns the run's config with init.run at the stage's folder."""
        from metalearn.engine.stages import compose_stage, stage_folder

        if cfg.init.run:
            raise MetalearnError(f"pretrain.experiment={cfg.pretrain.experiment} starts this run from its own "
                                 f"pre-training stage, and init.run={cfg.init.run} from another run; give one of them")
        stage = stage_folder(folder.path, read_only=folder.read_only)
        if stage.summary().get("status") == "completed":
            log.info("stage 1 of 2 (pre-training, %s) already completed in %s", cfg.pretrain.experiment, stage.path)
        else:
            if stage.checkpoint("last").is_file():
                stage_cfg = stage.saved_config()
                stage_cfg.resume = True
                for key in RESUME_SETTABLE:  # as the run's resume command set them (threads, the time limit)
                    OmegaConf.update(stage_cfg, key, OmegaConf.select(cfg, key), merge=False)
                log.info("stage 1 of 2: resuming the pre-training (%s) in %s", cfg.pretrain.experiment, stage.path)
            else:
                stage_cfg, stage_overrides = compose_stage(cfg, overrides)
                stage.path.mkdir(parents=True, exist_ok=True)
                stage.write_config(stage_cfg, stage_overrides, {"experiment": cfg.pretrain.experiment})
                log.info("stage 1 of 2: pre-training (%s) in %s", cfg.pretrain.experiment, stage.path)
            from metalearn.console import also_log_to

            with also_log_to(stage.log_file):
                train_and_draw(stage_cfg, stage, self.launch.group)
        log.info("stage 2 of 2: %s from the pre-trained weights", cfg.method.name)
        out = OmegaConf.create(OmegaConf.to_container(cfg))
        out.init.run = str(stage.path)
        return out

    def record_failure(self, e: BaseException) -> None:
        """summary.json of a run that did not complete: failed (or interrupted), with the reason in one line,
        so no run is left saying `running`. Never raises: the folder may be the thing that failed."""
        if self.started is None:
            return
        folder, cfg = self.started
        try:
            s = folder.summary()
            interrupted = isinstance(e, KeyboardInterrupt | TimeLimitReached)
            status = s.get("status") if s.get("status") in ("diverged", "interrupted") else (
                "interrupted" if interrupted else "failed")
            reason = one_line(e) if not isinstance(e, KeyboardInterrupt) else "interrupted (Ctrl-C or SIGTERM)"
            if isinstance(e, TimeLimitReached):
                reason = f"max_minutes={cfg.max_minutes} reached"
            folder.write_summary(cfg, status=status, error=reason)
            if not isinstance(e, MetalearnError | KeyboardInterrupt | TimeLimitReached):
                log.error("unexpected failure, recorded in %s:", folder.summary_path, exc_info=e)
        except Exception as inner:  # noqa: BLE001 - the original error matters more
            log.warning("could not record the failure in %s: %s", folder.path, one_line(inner))


def train_and_draw(cfg: DictConfig, folder: RunFolder, group: str | None) -> dict:
    """Train (or resume) and test; the learning curve is drawn when the run completed or diverged."""
    from metalearn.engine.plots import draw
    from metalearn.engine.trainer import train

    return train(cfg, folder, group=group, draw=lambda: draw(folder, cfg))


# before a run folder is claimed: what the command line asks for, checked and said
def smoke_keys() -> dict[str, object]:
    """What debug=smoke sets (configs/debug/smoke.yaml), as dotted keys."""
    from metalearn.config import config_dir

    flat: dict[str, object] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "debug" / "smoke.yaml")), "")
    return flat


def warn_smoke_overridden(choices: dict, overrides: list[str]) -> None:
    """debug=smoke with a larger explicit steps= (or test.episodes=, a wider backbone): the command line wins, as in
    any Hydra config, so the run is not smoke-sized; say so rather than start a ten-minute "smoke" run in silence.
    A smaller value (test.episodes=5) keeps it smoke-sized and is not mentioned."""
    if choices.get("debug") != "smoke":
        return
    sets = smoke_keys()
    for o in overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if key not in sets or key.endswith("every"):
            continue
        try:
            larger = float(value) > float(sets[key])  # type: ignore[arg-type]
        except ValueError:
            continue
        if larger:
            log.warning("debug=smoke sets %s=%s, but %s on the command line wins: this run is not smoke-sized",
                        key, sets[key], o)


def check_ranges(cfg: DictConfig, folder: RunFolder, made_here: bool) -> bool:
    """Every declared range and choice (the run's keys, its method's), checked before a run folder is claimed:
    a value out of range is refused like an unknown key, leaving no folder behind (Hydra has made the empty
    folder by now; it is removed when this command made it)."""
    from metalearn.config import SCHEMAS, TrainConfig, check_values

    try:
        check_values(cfg, TrainConfig)
        check_values(cfg.method, SCHEMAS["method"].get(cfg.method.name), prefix="method.")
    except MetalearnError:
        if made_here:
            folder.remove_if_empty()
        raise
    return True
