"""The training loop: episodes in, metrics, checkpoints and a summary out.

Determinism on resume: the training episodes of step s are drawn from
(seed, s) alone, and the checkpoint holds the model, optimiser, schedule and
torch RNG state, so a run killed and resumed from its last checkpoint ends
where an uninterrupted one would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from metalearn import optimizers
from metalearn.config import EvalProtocol, TrainConfig, TTAConfig, check_values
from metalearn.data import build_store
from metalearn.data.store import ImageStore
from metalearn.engine.checkpoint import load_checkpoint, save_checkpoint
from metalearn.engine.cuda_graph import GraphedSteps, check_cuda_graph
from metalearn.engine.distributed import (
    AveragingOptimizer,
    all_finite,
    any_rank,
    check_divisible,
    describe_ranks,
    init_from_env,
    local_device,
    shard,
)
from metalearn.engine.evaluate import (
    evaluate,
    evaluate_variable,
    mean_over_sources,
    per_source,
    protocol_for,
    setting_tag,
    task_spec,
)
from metalearn.engine.feature_cache import FeatureCache, FrozenCodes, cache_root, frozen_codes
from metalearn.engine.init_weights import initialize_from, parse_rename
from metalearn.engine.progress import Progress
from metalearn.engine.restore import restore_method
from metalearn.engine.rundir import RunFolder
from metalearn.engine.search_trial import TrialPruned, reporter
from metalearn.errors import MetalearnError, TimeLimitReached, TrainingDiverged
from metalearn.hardware import autocast, describe_device, setup_device
from metalearn.loggers import Trackers, open_trackers
from metalearn.methods import Method, build_method
from metalearn.methods.base import TrainingContext
from metalearn.readouts import build_readout
from metalearn.tasks.augment import random_affine
from metalearn.tasks.episodes import EpisodePlans, EpisodeSampler, TaskSpec
from metalearn.tasks.variable import VariablePlans, VariableSampler

log = logging.getLogger("metalearn")


def build_optimizer(cfg: Any, params) -> torch.optim.Optimizer:
    """cfg's values were checked by config.check_values (the ranges and choices its schema declares). torch's Adam and SGD,
    without their torch.compile hooks (metalearn.optimizers: ~1.1 s less start-up)."""
    if cfg.name == "adam":
        return optimizers.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return optimizers.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizers.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_schedule(cfg: Any, optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.name == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if cfg.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, cfg.step_size), gamma=cfg.gamma)
    if cfg.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / max(1, steps)))  # linear


def preprocess_spec(store: ImageStore, image_size: int) -> dict:
    """What load_run needs to turn a user's images into this run's inputs."""
    c = store.image_shape[0]
    return {"image_size": image_size, "channels": c, "invert": store.invert, "mean": store.mean, "std": store.std}


def test_protocols(cfg: DictConfig) -> list[EvalProtocol]:
    """test.ways x test.shots on random episodes, then each of test.extra (older run configs lack it), any with a
    readout and test-time copies of its own."""
    ways, shots = list(cfg.test.ways) or [cfg.ways], list(cfg.test.shots) or [cfg.shots]
    common = {"split": "test", "queries": cfg.queries, "episodes": cfg.test.episodes, "seed": cfg.test.seed}
    out = [EvalProtocol(ways=w, shots=s, **common) for w in ways for s in shots]
    for extra in cfg.test.get("extra") or []:
        options = {"within": extra.within, "disjoint_drawers": bool(extra.disjoint_drawers),
                   "readout": extra.get("readout"), "tta": TTAConfig(**(extra.get("tta") or {})),
                   **{f"finetune_{k}": v for k, v in (extra.get("finetune") or {}).items()}}
        out += [EvalProtocol(ways=extra.ways, shots=s, **common, **options)
                for s in ([extra.shots] if extra.shots is not None else shots)]
    return out


@dataclass
class TrainState:
    step: int = 0
    best_val: float = -1.0
    best_step: int = -1
    best_ci95: float = 0.0
    elapsed: float = 0.0
    last_train: dict = field(default_factory=dict)
    last_val: dict = field(default_factory=dict)
    window: list = field(default_factory=list)  # step stats since the last log line


class Trainer:
    """Owns one run: builds the pieces from the config, trains, validates, tests."""

    def __init__(self, cfg: DictConfig, folder: RunFolder):
        check_values(cfg, TrainConfig)
        self.cfg, self.folder = cfg, folder
        self.trackers = Trackers({})  # train() opens the ones cfg.logger names
        self.device = local_device(setup_device(cfg.hardware))
        self.ranks = init_from_env(self.device)
        self.processes = describe_ranks(self.ranks, self.device)  # world size, backend, each rank's device
        self.amp = cfg.hardware.amp
        self.cuda_graph = bool(cfg.hardware.get("cuda_graph", False))  # run folders from before the option lack it
        self.report = reporter()  # a search trial's validations, for its pruner (engine/search_trial.py)
        check_cuda_graph(self.cuda_graph, self.device)
        torch.manual_seed(cfg.seed)
        self.train_spec = TaskSpec(cfg.sampler.train_ways, cfg.sampler.train_shots, cfg.sampler.train_queries,
                                   cfg.sampler.get("within"), bool(cfg.sampler.get("disjoint_drawers", False)))
        self.eval_spec = TaskSpec(cfg.ways, cfg.shots, cfg.queries)
        self.test_protocols = test_protocols(cfg)
        self.store = build_store(cfg.dataset)
        log.info("%s", self.store.describe())
        self.variable = cfg.sampler.get("kind", "episodic") == "variable"  # older run configs lack the key
        self.val_plans: dict[str | None, EpisodePlans | VariablePlans] | None = None  # by source (None: one dataset)
        if cfg.val.every > 0 and len(self.store.splits.get("val", [])):
            self.val_plans = {}
            for name, part in per_source(self.store, "val"):
                if self.variable:  # validation on variable episodes too: what the run is trained for
                    self.val_plans[name] = VariableSampler(part, "val", cfg.val.seed).plans(0, cfg.val.episodes)
                else:
                    self.val_plans[name] = EpisodeSampler(part, "val", self.eval_spec, cfg.val.seed).plans(0, cfg.val.episodes)
        for _, part in per_source(self.store, "test"):  # fail now, not after an hour of training
            for protocol in self.test_protocols:
                EpisodeSampler(part, "test", task_spec(protocol), cfg.test.seed)
        channels_last = cfg.hardware.channels_last and self.device.type in ("cpu", "cuda")
        self.train_classes = len(self.store.splits["train"])
        self.method: Method = build_method(cfg.method, self.store.image_shape, self.train_spec.ways, channels_last,
                                           self.train_classes, self.train_spec.shots).to(self.device)
        self.pretrained: dict = {}  # a pre-trained encoder's own input (timm's pretrained config), for the record
        for module in self.method.modules():  # a pre-trained encoder undoes the dataset's standardisation (timm)
            if hasattr(module, "set_input_stats"):
                module.set_input_stats(self.store.mean, self.store.std)
                self.pretrained = module.pretrained_input()
                if self.pretrained.get("image_size") not in (None, self.store.image_shape[-1]):
                    log.info("the encoder %s was pre-trained on %d-pixel images and this run feeds it %d-pixel ones "
                             "(dataset.image_size)", self.pretrained["model"], self.pretrained["image_size"],
                             self.store.image_shape[-1])
        if self.variable:
            self._check_variable(cfg)
        context = TrainingContext(self.store, cfg.seed, self.train_spec, cfg.sampler.meta_batch, self.device, channels_last,
                                  OmegaConf.to_container(cfg.dataset, resolve=True),
                                  lambda run: restore_method(run, "last", self.device), self.variable)
        self.method.prepare(context)
        self.frozen: FrozenCodes | None = None  # feature_cache=true: the frozen encoder's codes, per split
        if cfg.get("feature_cache"):
            self.frozen = frozen_codes(self.method, cache_root(cfg.dataset), str(self.amp), self.device,
                                       bool(cfg.augment.enabled))
            self.method.codes_of = self.frozen.codes_of(self.store)
            if self.cuda_graph:  # a captured step replays the encoder on pixels; the cache serves eager steps
                log.info("hardware.cuda_graph is off for this run: its steps read cached codes instead of the encoder")
                self.cuda_graph = False
        self.train_source = self.method.training_source(context)
        check_divisible(self.train_source.per_step, self.train_source.unit, self.ranks)
        for spec in [self.eval_spec, *map(task_spec, self.test_protocols)]:
            self.method.check_task(spec)
        for protocol in self.test_protocols:  # a readout that cannot read this method: refused before training
            readout = build_readout(protocol.readout, protocol)
            if readout is not None:
                readout.check(self.method, protocol.tta.copies)
        self.trainable = self.method.learns()
        self.optimizer = build_optimizer(cfg.optimizer, self.method.parameter_groups(cfg.optimizer.lr) if self.trainable
                                         else [torch.zeros(1, requires_grad=True)])
        self.schedule = build_schedule(cfg.schedule, self.optimizer, cfg.steps)
        self.state = TrainState()
        self.preprocess = preprocess_spec(self.store, self.store.image_shape[-1])
        if self.pretrained:  # recorded with the run: what the encoder was pre-trained on (its normalisation is inside)
            self.preprocess["pretrained"] = self.pretrained

    def _check_variable(self, cfg: DictConfig) -> None:
        """sampler=variable: refused before any step, with the reason, where it cannot run."""
        if cfg.sampler.meta_batch != 1:
            raise MetalearnError(f"sampler=variable trains on one episode a step (their shapes differ); "
                                 f"sampler.meta_batch={cfg.sampler.meta_batch} must be 1")
        for split in ("train", "val", "test"):
            for _, part in per_source(self.store, split) if len(self.store.splits.get(split, [])) else []:
                sampler = VariableSampler(part, split, cfg.seed)  # too few classes or images: one line
                try:
                    self.method.check_variable(min(sampler.rules.max_ways, len(sampler.classes)))
                except MetalearnError as e:
                    raise MetalearnError(f"sampler=variable: {e}; train it on fixed episodes (sampler=episodic), or use "
                                         f"method=proto_maml, whose head is built for each task") from None
        if self.method.train_data == "episodes" and self.method.variable_training:
            raise MetalearnError(f"sampler=variable: {self.method.name} cannot train on variable episodes: "
                                 f"{self.method.variable_training}")

    def _cache(self, part: ImageStore, split: str, source: str | None) -> FeatureCache | None:
        """A split's codes for validation and the test when the encoder is frozen (evaluate uses them only where an
        image's code is fixed: no test-time copies, no fine-tuned encoder, batch norms on running statistics)."""
        return self.frozen.cache(part, split, source) if self.frozen is not None else None

    # ------------------------------------------------------------ checkpoints
    def _checkpoint(self, name: str) -> None:
        """Save, unless the weights went non-finite: a checkpoint on disk is always a good one."""
        self._check_finite()
        if not self.ranks.main:  # every rank holds the same weights; rank 0 writes them
            return
        save_checkpoint(self.folder.checkpoint(name), {
            "step": self.state.step, "state": self.state.__dict__, "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
            "torch_rng": torch.get_rng_state(), "config": OmegaConf.to_container(self.cfg, resolve=True),
            "preprocess": self.preprocess, "train_classes": self.train_classes})

    def _check_finite(self) -> None:
        """Non-finite weights stop the run before they are validated or saved."""
        if not all(torch.isfinite(p).all() for p in self.method.state_dict().values() if p.is_floating_point()):
            raise TrainingDiverged(f"the weights became non-finite by step {self.state.step}; training stopped. "
                                   f"{self._last_good()} Lower optimizer.lr (now {self.cfg.optimizer.lr}) and start again.")

    def restore(self) -> None:
        ckpt = load_checkpoint(self.folder.checkpoint("last"))
        self.method.load_state_dict(ckpt["method"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        torch.set_rng_state(ckpt["torch_rng"])
        self.state = TrainState(**ckpt["state"])
        self.folder.truncate_metrics(self.state.step)
        log.info("resumed from step %d of %d", self.state.step, self.cfg.steps)

    # ------------------------------------------------------------ the loop
    def validate(self) -> dict:
        """Accuracy on the validation episodes; for several sources, their mean (what selects the best checkpoint)
        and each source's, as accuracy_<source>."""
        scored = {}
        with torch.random.fork_rng(devices=[]):  # validation must not shift the training RNG stream
            for name, plans in self.val_plans.items():
                part = self.store if name is None else self.store.source_view(name)
                cache = self._cache(part, "val", name)
                if self.variable:
                    r = evaluate_variable(self.method, part, "val", len(plans), self.cfg.val.seed, self.device,
                                          autocast(self.device, self.amp), cache)
                else:
                    r = evaluate(self.method, part, protocol_for("val", self.eval_spec, len(plans), self.cfg.val.seed),
                                 self.device, self.cfg.test.batch, autocast(self.device, self.amp), plans=plans,
                                 cache=cache)
                scored[name] = {"accuracy": r.accuracy, "ci95": r.ci95, "episodes": len(r.per_episode)}
        if None in scored:
            return {"accuracy": scored[None]["accuracy"], "ci95": scored[None]["ci95"]}
        mean = mean_over_sources(scored)
        return {"accuracy": mean["accuracy"], "ci95": mean["ci95"],
                **{f"accuracy_{n}": r["accuracy"] for n, r in scored.items()}}

    def fit(self) -> None:
        cfg, st = self.cfg, self.state
        if not self.trainable:
            log.info("%s has no trainable parameters (none, or a frozen encoder): nothing to train, going straight to "
                     "the test", self.method.name)
            self._checkpoint("last")
            return
        per_step, unit = self.train_source.per_step, self.train_source.unit
        window = st.window
        background = float(self.store.normalize(torch.zeros(())))  # augmentation fills new pixels with it
        optimizer = AveragingOptimizer(self.optimizer, self.ranks) if self.ranks.active else self.optimizer
        t_window = time.perf_counter()
        t_start = time.perf_counter() - st.elapsed
        deadline = None if cfg.max_minutes is None else time.perf_counter() + 60 * cfg.max_minutes
        graphed = GraphedSteps(self.method, optimizer, lambda: autocast(self.device, self.amp, cache=False)
                               ) if self.cuda_graph else None
        self.method.train()
        with Progress(cfg.steps, st.step, f"{self.method.name} on {cfg.dataset.name}") as bar:
            while st.step < cfg.steps:
                batch = shard(self.train_source.batch(st.step, self.device), self.ranks)
                if cfg.augment.enabled:
                    batch = batch.map_images(lambda x: random_affine(x, cfg.augment, background))
                stats = graphed.step(batch) if graphed is not None else None
                if stats is None:
                    with autocast(self.device, self.amp):
                        stats = self.method.train_step(batch, optimizer)
                if not all_finite(stats["loss"], self.ranks):
                    raise TrainingDiverged(
                        f"the training loss became {stats['loss']} at step {st.step + 1}; training stopped. "
                        f"{self._last_good()} Lower optimizer.lr (now {cfg.optimizer.lr}) and start again.")
                if self.method.steps_optimizer:
                    self.schedule.step()
                st.step += 1
                window.append(stats)
                if st.step % cfg.log_every == 0 or st.step == cfg.steps:
                    dt = time.perf_counter() - t_window
                    # loss, accuracy and any terms a method reports (e.g. distillation's two parts), averaged
                    keys = [k for k in window[0] if all(k in s for s in window)]
                    st.last_train = {"kind": "train", "step": st.step,
                                     **{k: sum(s[k] for s in window) / len(window) for k in keys},
                                     "lr": self.optimizer.param_groups[0]["lr"],
                                     f"{unit}_per_s": len(window) * per_step / max(dt, 1e-9)}
                    self.record(st.last_train)
                    bar.update(st.step, st.last_train)
                    window.clear()
                    t_window = time.perf_counter()
                if self.val_plans is not None and (st.step % cfg.val.every == 0 or st.step == cfg.steps):
                    self._check_finite()
                    v = self.validate()
                    st.last_val = {"kind": "val", "step": st.step, **v}
                    self.record(st.last_val)
                    bar.note(f"step {st.step}: validation {100 * v['accuracy']:.2f} ± {100 * v['ci95']:.2f}%")
                    if v["accuracy"] > st.best_val:
                        st.best_val, st.best_step, st.best_ci95 = v["accuracy"], st.step, v["ci95"]
                        self._checkpoint("best")
                    if self.report is not None and self.report(st.step, v["accuracy"]):
                        st.elapsed = time.perf_counter() - t_start
                        self._checkpoint("last")
                        raise TrialPruned(st.step)
                    t_window = time.perf_counter()
                saved = st.step % cfg.checkpoint_every == 0 or st.step == cfg.steps
                out_of_time = deadline is not None and any_rank(time.perf_counter() >= deadline, self.ranks)
                if saved or (out_of_time and st.step < cfg.steps):
                    st.elapsed = time.perf_counter() - t_start
                    self._checkpoint("last")
                if out_of_time and st.step < cfg.steps:
                    raise TimeLimitReached(st.step)
        st.elapsed = time.perf_counter() - t_start

    def record(self, record: dict) -> None:
        """A training or validation record: metrics.jsonl (with its wall time), then each tracker."""
        stamped = {**record, "time": round(time.time(), 3)}
        self.folder.append_metrics(stamped)
        self.trackers.log_metrics(stamped)

    def _last_good(self) -> str:
        path = self.folder.checkpoint("last")
        if not path.is_file():
            return (f"No checkpoint was written yet (the first comes at step checkpoint_every="
                    f"{self.cfg.checkpoint_every}), so the run must start again.")
        return f"The last good checkpoint is {path} (step {load_checkpoint(path)['step']})."

    def test(self) -> dict:
        """Test on the fixed test episodes with the best checkpoint (the last one when there is no validation)."""
        if self.cfg.test.episodes == 0:
            log.info("test skipped (test.episodes=0); test later with: metalearn-eval run=%s", self.folder.path)
            return {}
        path = self.folder.weights("best")
        which = path.stem
        self.method.load_state_dict(load_checkpoint(path)["method"])
        results = {}
        for protocol in self.test_protocols:
            tag = setting_tag(protocol)
            scored = {}
            for name, part in per_source(self.store, "test"):
                r = evaluate(self.method, part, protocol, self.device, self.cfg.test.batch, autocast(self.device, self.amp),
                             cache=self._cache(part, "test", name))
                if self.ranks.main:
                    r.save(self.folder.eval_dir, f"test_{tag}" if name is None else f"test_{tag}@{name}")
                scored[name] = r.summary()
                log.info("test %s%s: %.2f ± %.2f%% (%d episodes, %s checkpoint)", tag, f" on {name}" if name else "",
                         100 * r.accuracy, 100 * r.ci95, len(r.per_episode), which)
            results[tag] = {**self._pooled(scored, tag), "checkpoint": which}
        if self.variable:  # the episodes it trained on: a variable-episode test beside the fixed settings
            scored = {}
            for name, part in per_source(self.store, "test"):
                r = evaluate_variable(self.method, part, "test", self.cfg.test.episodes, self.cfg.test.seed,
                                      self.device, autocast(self.device, self.amp), self._cache(part, "test", name))
                if self.ranks.main:
                    r.save(self.folder.eval_dir, "test_variable" if name is None else f"test_variable@{name}")
                scored[name] = r.summary()
                log.info("test variable%s (%d-%d ways, support %d-%d images): %.2f ± %.2f%% (%d episodes, %s "
                         "checkpoint)", f" on {name}" if name else "", r.ways.min(), r.ways.max(),
                         r.support_sizes.min(), r.support_sizes.max(), 100 * r.accuracy, 100 * r.ci95,
                         len(r.per_episode), which)
            results["variable"] = {**self._pooled(scored, "variable"), "checkpoint": which}
        return results

    def _pooled(self, scored: dict, tag: str) -> dict:
        """One dataset's result as it is; several sources' as their mean with each source's (logged)."""
        if None in scored:
            return scored[None]
        mean = mean_over_sources(scored)
        log.info("test %s, mean over %d sources: %.2f ± %.2f%%", tag, len(scored), 100 * mean["accuracy"],
                 100 * mean["ci95"])
        return mean


def train(cfg: DictConfig, folder: RunFolder, group: str | None = None, draw: Callable[[], None] | None = None) -> dict:
    """Train (or resume), test, and write the run's summary; returns the summary. `group`: the sweep a job
    belongs to, for the trackers; `draw`: the learning curve, drawn when the run completed or diverged, before the
    trackers store the folder."""
    trainer = Trainer(cfg, folder)
    if not folder.read_only:
        trainer.trackers = open_trackers(cfg, folder.path, group, folder.artifacts)
    status = "failed"
    try:
        summary = _train(trainer, cfg, folder)
        status = "completed"
        return summary
    except (TrainingDiverged, KeyboardInterrupt, TimeLimitReached) as e:
        status = "diverged" if isinstance(e, TrainingDiverged) else "interrupted"
        raise
    except TrialPruned as e:  # a search's pruner stopped it: recorded, not tested, not a failure
        status = "pruned"
        log.info("pruned by the search at step %d (below the other trials at that step); not tested", e.step)
        return folder.write_summary(cfg, status="pruned", state=trainer.state)
    finally:
        if draw is not None and status in ("completed", "diverged", "pruned"):
            draw()
        trainer.trackers.finish(status)


def _train(trainer: Trainer, cfg: DictConfig, folder: RunFolder) -> dict:
    init = None
    if cfg.resume and folder.checkpoint("last").is_file():  # its own checkpoint, holding any init.run weights
        trainer.restore()
    elif cfg.init.run:
        init = initialize_from(trainer.method, cfg.init.run, cfg.init.checkpoint, list(cfg.init.only),
                               parse_rename(list(cfg.init.rename)))
    log.info("device: %s", describe_device(trainer.device))
    folder.write_summary(cfg, status="running", device=describe_device(trainer.device), init=init,
                         processes=trainer.processes)
    try:
        trainer.fit()
    except TrainingDiverged:
        folder.write_summary(cfg, status="diverged", state=trainer.state)
        raise
    except KeyboardInterrupt:
        folder.write_summary(cfg, status="interrupted", state=trainer.state)
        log.warning("interrupted at step %d; the last checkpoint is kept, continue with: "
                    "metalearn-train resume=true run_dir=%s", trainer.state.step, folder.resume_dir)
        raise
    except TimeLimitReached:
        folder.write_summary(cfg, status="interrupted", state=trainer.state)
        log.warning("max_minutes=%s reached at step %d of %d; checkpointed there, continue with: "
                    "metalearn-train resume=true run_dir=%s", cfg.max_minutes, trainer.state.step, cfg.steps,
                    folder.resume_dir)
        raise
    tests = trainer.test()
    trainer.trackers.log_test(tests)
    summary = folder.write_summary(cfg, status="completed", state=trainer.state, test=tests,
                                   device=describe_device(trainer.device))
    log.info("run folder: %s", folder.path)
    return summary
