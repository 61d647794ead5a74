"""A Hydra sweeper over Optuna's ask-and-tell API: `metalearn-train -m search=<space> hydra.sweeper.n_trials=30`.

Why our own and not hydra-optuna-sweeper: its last release (1.3.0) needs optuna < 3, whose storage needs
SQLAlchemy < 2, so installing it downgraded both for everything else in a researcher's environment. Hydra's
`Sweeper` plugin interface is its documented extension point, and ask-and-tell is Optuna's stable API for a
driver that launches trials itself, so this is a small adapter (current Optuna, SQLAlchemy 2) that keeps the
same config keys and the same result file (`optimization_results.yaml` in the sweep folder).

The search space is `hydra.sweeper.params` (and any sweep on the command line) in Hydra's own sweep syntax:
`choice(5, 10, 20)`, `range(1, 5)`, `interval(1e-4, 1e-2)`, `tag(log, interval(1e-4, 1e-2))`.
Storage: null (in memory), an SQLAlchemy URL (`sqlite:///study.db`), or `journal:///path/study.log` (Optuna's
journal file: no database server, what a shared cluster filesystem allows). A stored study is resumed by
`study_name`; several processes on one storage add their trials to one study.
"""
# no `from __future__ import annotations`: Hydra loads plugin modules without registering them in sys.modules,
# where dataclasses would look string annotations up

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from metalearn.engine import search_trial
from metalearn.engine.search_trial import storage_of

log = logging.getLogger("metalearn")

SAMPLERS = ("tpe", "random", "gp", "cmaes")
PRUNERS = ("none", "median", "hyperband")


@dataclass
class SamplerConf:
    name: str = "tpe"  # tpe | random | gp | cmaes (Optuna's samplers; cmaes needs the cmaes package)
    seed: int | None = None


@dataclass
class PrunerConf:
    name: str = "none"  # none | median (below the median of earlier trials at a step) | hyperband
    n_startup_trials: int = 3  # median: trials that run in full before any is pruned
    n_warmup_steps: int = 0  # median: steps before a trial can be pruned


@dataclass
class OptunaSearchConf:
    _target_: str = "hydra_plugins.metalearn_search.optuna_search.OptunaSearch"
    direction: str = "maximize"
    study_name: str | None = None
    storage: str | None = None
    n_trials: int = 20
    n_jobs: int = 1  # trials per batch: with launcher=joblib they run in parallel
    max_failure_rate: float = 0.0  # the share of a batch's trials that may fail before the search stops
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    params: dict[str, str] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="optuna_search", node=OptunaSearchConf,
                             provider="metalearn")


def sampler_of(conf: Any) -> Any:
    import optuna

    name, seed = conf.get("name", "tpe"), conf.get("seed")
    if name not in SAMPLERS:
        raise ValueError(f"hydra.sweeper.sampler.name={name} is not one of: {', '.join(SAMPLERS)}")
    return {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
            "gp": lambda: optuna.samplers.GPSampler(seed=seed),
            "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed)}[name]()


def pruner_of(conf: Any) -> Any:
    import optuna

    name = conf.get("name", "none")
    if name not in PRUNERS:
        raise ValueError(f"hydra.sweeper.pruner.name={name} is not one of: {', '.join(PRUNERS)}")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=conf.get("n_startup_trials", 3),
                                           n_warmup_steps=conf.get("n_warmup_steps", 0))
    return optuna.pruners.HyperbandPruner() if name == "hyperband" else optuna.pruners.NopPruner()


def suggest(trial: Any, name: str, space: Any) -> Any:
    """One parameter of a trial from a Hydra sweep: choice and range as categories, interval as a float (or an
    int when both ends are ints), on a log scale when tagged `log`."""
    if isinstance(space, ChoiceSweep):
        return trial.suggest_categorical(name, list(space.list))
    if isinstance(space, RangeSweep):
        return trial.suggest_categorical(name, list(range(int(space.start), int(space.stop), int(space.step or 1))))
    if isinstance(space, IntervalSweep):
        log_scale = "log" in (space.tags or set())
        if isinstance(space.start, int) and isinstance(space.end, int) and "float" not in (space.tags or set()):
            return trial.suggest_int(name, space.start, space.end, log=log_scale)
        return trial.suggest_float(name, float(space.start), float(space.end), log=log_scale)
    raise ValueError(f"{name}: the search takes choice(), range() or interval() sweeps, not {space}")


class OptunaSearch(Sweeper):
    def __init__(self, direction: str, study_name: str | None, storage: str | None, n_trials: int, n_jobs: int,
                 max_failure_rate: float, sampler: Any, pruner: Any, params: dict[str, str] | None) -> None:
        self.direction, self.study_name, self.storage_url = direction, study_name, storage
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.sampler_conf, self.pruner_conf, self.params = sampler, pruner, dict(params or {})
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                 task_function=task_function, config=config)
        self.sweep_dir = config.hydra.sweep.dir

    def space(self, arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
        """The searched parameters (the config's params, then the command line's sweeps) and the fixed overrides."""
        parser = OverridesParser.create()
        searched: dict[str, Any] = {}
        for key, value in self.params.items():
            override: Override = parser.parse_overrides([f"{key}={value}"])[0]
            searched[key] = override.value() if override.is_sweep_override() else None
        fixed = []
        for override in parser.parse_overrides(arguments):
            key = override.get_key_element()
            if override.is_sweep_override():
                searched[key] = override.value()
            else:
                searched.pop(key, None)  # a parameter given one value on the command line is not searched
                fixed.append(override.input_line)
        for key, value in self.params.items():
            if searched.get(key, True) is None:  # a params entry with one value: fixed, as Hydra would take it
                searched.pop(key)
                fixed.append(f"{key}={value}")
        return searched, fixed

    def trial_env(self, study: Any, trial: Any) -> list[str]:
        """The job's environment naming its trial, so its validations can be reported and pruned."""
        if self.storage_url is None:
            search_trial.IN_PROCESS[trial._trial_id] = trial
        env = "+hydra.job.env_set."
        return [f"{env}{search_trial.TRIAL}={trial._trial_id}",
                f"{env}{search_trial.STORAGE}='{self.storage_url or search_trial.MEMORY}'",
                f"{env}{search_trial.STUDY}='{study.study_name}'"]

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        searched, fixed = self.space(arguments)
        study = optuna.create_study(study_name=self.study_name, storage=storage_of(self.storage_url),
                                    sampler=sampler_of(self.sampler_conf), pruner=pruner_of(self.pruner_conf),
                                    direction=self.direction, load_if_exists=True)
        pruning = self.pruner_conf.get("name", "none") != "none"
        log.info("search: study %s (%s), %d trials, %s sampler, %s", study.study_name, self.storage_url or "in memory",
                 self.n_trials, self.sampler_conf.get("name", "tpe"), self.direction)
        to_go = self.n_trials
        while to_go > 0:
            batch = min(to_go, self.n_jobs)
            trials = [study.ask() for _ in range(batch)]
            jobs = [fixed + [f"{name}={suggest(t, name, space)}" for name, space in searched.items()]
                    + (self.trial_env(study, t) if pruning else []) for t in trials]
            returns = self.launcher.launch(jobs, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            failures = 0
            for trial, ret in zip(trials, returns, strict=True):
                value = ret.return_value if ret.status == JobStatus.COMPLETED else None
                search_trial.IN_PROCESS.pop(trial._trial_id, None)
                if value == "pruned":  # stopped at a validation step by the pruner (engine/search_trial.py)
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                elif value is None or not isinstance(value, int | float) or math.isnan(value):
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)  # no made-up score for a failed trial
                    failures += 1
                else:
                    study.tell(trial, float(value))
            if failures / len(returns) > self.max_failure_rate:
                for ret in returns:  # the first failure's own error, with its traceback
                    if ret.status != JobStatus.COMPLETED:
                        _ = ret.return_value
                raise RuntimeError(f"{failures} of {len(returns)} trials failed (max_failure_rate="
                                   f"{self.max_failure_rate})")
            to_go -= batch
        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not completed:
            raise RuntimeError(f"no trial of study {study.study_name} completed")
        best = study.best_trial
        log.info("search: best value %s with %s", best.value, best.params)
        OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": best.params, "best_value": best.value}),
                       Path(self.sweep_dir) / "optimization_results.yaml")
