"""Few-shot evaluation: mean accuracy and 95% CI over a fixed list of episodes, as one EvalProtocol says.

The protocol (metalearn.config.EvalProtocol) decides which episodes are scored and how; a readout
(metalearn.readouts) may stand in for an embedding method's own head. This loop never asks which readout,
method or test-time option it holds."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from metalearn.config import EvalProtocol, TTAConfig
from metalearn.data.store import ImageStore
from metalearn.engine.feature_cache import FeatureCache, encoder_rows
from metalearn.errors import MetalearnError
from metalearn.files import atomic_open, write_text
from metalearn.methods.base import EmbeddingMethod, Method, accuracy, fp32
from metalearn.methods.task_norm import batch_norm_layers
from metalearn.readouts import Readout, build_readout
from metalearn.stats import t_interval
from metalearn.tasks.episodes import EpisodePlans, EpisodeSampler, TaskSpec, episode_labels, gather
from metalearn.tasks.variable import VariablePlans, VariableSampler, gather_one


@dataclass
class EvalResult:
    split: str
    spec: TaskSpec
    seed: int
    per_episode: np.ndarray  # accuracy of each episode, in plan order
    plans: EpisodePlans
    batch_norm: str | None = None  # an embedding method's test-time batch-norm statistics (None: no such layers)
    inner_steps: int | None = None  # a method that adapts by gradient steps: how many each test task took
    transductive: bool = False  # predictions used the task's other queries (metalearn.methods.base.Method)
    tta: dict | None = None  # test-time copies (TTAConfig.record), when used
    readout: dict = field(default_factory=dict)  # the readout in place of the method's own head (Readout.record)

    @property
    def accuracy(self) -> float:
        return float(self.per_episode.mean())

    @property
    def ci95(self) -> float:
        """Half-width of the 95% Student's t interval over the episodes (n - 1 degrees of freedom): the few-shot
        literature's 1.96·std/√n to three digits at 600 episodes, and honest for a short evaluation."""
        return t_interval(self.per_episode).half_width

    def summary(self) -> dict:
        return {"split": self.split, "ways": self.spec.ways, "shots": self.spec.shots, "queries": self.spec.queries,
                **self.spec.protocol(), "episodes": len(self.per_episode), "seed": self.seed,
                "accuracy": self.accuracy, "ci95": self.ci95,
                "episodes_digest": self.plans.digest(), **({"batch_norm": self.batch_norm} if self.batch_norm else {}),
                **({"inner_steps": self.inner_steps} if self.inner_steps else {}),
                **({"transductive": True} if self.transductive else {}),
                **({"tta": self.tta} if self.tta else {}), **self.readout}

    def save(self, folder: Path, name: str, extra: dict | None = None) -> Path:
        """<name>.json (summary + per-episode accuracies, + `extra`) and <name>_episodes.npz (the plans)."""
        with atomic_open(folder / f"{name}_episodes.npz") as f:
            np.savez_compressed(f, **self.plans.to_dict())
        path = folder / f"{name}.json"
        write_text(path, json.dumps({**self.summary(), "per_episode": self.per_episode.tolist(), **(extra or {})},
                                     indent=1))
        return path


def per_source(store: ImageStore, split: str) -> list[tuple[str | None, ImageStore]]:
    """What a validation or test scores: each source with classes in `split` alone, for a multi-source store
    (dataset=multi: never an episode mixing two sources, as Meta-Dataset tests), else the store itself (name None)."""
    if not store.sources:
        return [(None, store)]
    views = [(n, store.source_view(n)) for n in store.source_names()]
    return [(n, v) for n, v in views if len(v.splits.get(split, []))]


def mean_over_sources(results: dict[str, dict]) -> dict:
    """Per-source results (summaries) as Meta-Dataset reports them: each source, and their mean accuracy. The mean's
    interval treats the sources' episodes as independent (they share none): sqrt(sum of half-widths^2) / sources."""
    accs = [r["accuracy"] for r in results.values()]
    half = float(np.sqrt(sum(r["ci95"] ** 2 for r in results.values()))) / len(results)
    first = next(iter(results.values()))
    own = ("accuracy", "ci95", "episodes", "episodes_digest", "ways_mean", "ways_range", "support_mean", "support_range")
    shared = {k: v for k, v in first.items() if k not in own and all(r.get(k) == v for r in results.values())}
    return {**shared, "accuracy": float(np.mean(accs)), "ci95": half, "episodes": sum(r["episodes"] for r in results.values()),
            **({"transductive": True} if any(r.get("transductive") for r in results.values()) else {}),
            "sources": results}


def protocol_for(split: str, spec: TaskSpec, episodes: int, seed: int, **options) -> EvalProtocol:
    """The protocol that scores `episodes` episodes of `spec` on `split` from `seed`, with any other option."""
    return EvalProtocol(split=split, ways=spec.ways, shots=spec.shots, queries=spec.queries, episodes=episodes,
                        seed=seed, within=spec.within, disjoint_drawers=spec.disjoint_drawers, **options)


def task_spec(protocol: EvalProtocol) -> TaskSpec:
    """The episodes' shape a (resolved: ways, shots and queries given) protocol scores."""
    if None in (protocol.ways, protocol.shots, protocol.queries):
        raise MetalearnError("the protocol's ways, shots and queries must be given (resolve them against the run first)")
    return TaskSpec(protocol.ways, protocol.shots, protocol.queries, protocol.within, bool(protocol.disjoint_drawers))


def resolve(protocol: EvalProtocol, ways: int, shots: int, queries: int) -> EvalProtocol:
    """The protocol with the run's own ways, shots and queries where it leaves them open (null)."""
    return replace(protocol, ways=protocol.ways or ways, shots=protocol.shots or shots,
                   queries=protocol.queries or queries)


def setting_tag(protocol: EvalProtocol) -> str:
    """A test setting's name in a run's summary and eval/test_<name>.json: its task's tag (5w1s, 20w1s_within-...),
    and its copies and readout when it has them."""
    readout = build_readout(protocol.readout, protocol)
    suffix = "" if readout is None or readout.keeps_copies else readout.file_tag
    return f"{task_spec(protocol).tag}{protocol.tta_tag(readout)}{suffix}"


def evaluate(method: Method, store: ImageStore, protocol: EvalProtocol, device: torch.device, batch: int = 50,
             autocast: contextlib.AbstractContextManager | None = None, plans: EpisodePlans | None = None,
             cache: FeatureCache | None = None) -> EvalResult:
    """Accuracy of `method` on the protocol's episodes (or the given plans): with test-time copies (tta.copies > 1),
    an embedding method's codes of augmented copies of each image; with a readout, its codes classified by it."""
    readout = build_readout(protocol.readout, protocol)
    if readout is not None and getattr(readout, "grid", None):
        select_finetune_lr(method, store, protocol, readout, device, batch, autocast)
    spec = task_spec(protocol)
    plans = _plans(store, protocol, spec) if plans is None else plans
    accs = [accuracy(logits, labels, 1).cpu()
            for logits, labels in _episode_logits(method, store, plans, device, batch, autocast, protocol, readout, cache)]
    return _result(method, protocol, spec, torch.cat(accs).numpy(), plans, readout)


def select_finetune_lr(method: Method, store: ImageStore, protocol: EvalProtocol, readout: Readout,
                       device: torch.device, batch: int, autocast: contextlib.AbstractContextManager | None) -> None:
    """Set the readout's learning rate to the one of finetune_lr_grid that scores best on finetune_val_episodes
    episodes of the validation split (the first on a tie), as P>M>F chooses it: never on the episodes it reports."""
    if not len(store.splits.get("val", [])):
        raise MetalearnError(f"finetune_lr_grid chooses readout={readout.name}'s learning rate on validation episodes, "
                             f"and {store.meta.get('name', 'the dataset')} has no validation split; give "
                             f"finetune_lr= instead")
    scores = {}
    for lr in readout.grid:
        trial = replace(protocol, split="val", episodes=protocol.finetune_val_episodes, finetune_lr=lr,
                        finetune_lr_grid=[])
        scores[f"{lr:g}"] = evaluate(method, store, trial, device, batch, autocast).accuracy
    best = max(scores, key=scores.get)
    readout.lr, readout.chosen_from = float(best), scores


def evaluate_ensemble(methods: list[tuple[Method, ImageStore]], protocol: EvalProtocol, device: torch.device,
                      batch: int = 50, autocast: contextlib.AbstractContextManager | None = None
                      ) -> tuple[EvalResult, list[EvalResult]]:
    """An ensemble's accuracy: each query's class probabilities (the softmax of each member's logits) averaged
    over the members, on the first member's store's episodes; and each member's own result on the same
    episodes. Each member reads the images through its own store (members may render them at other sizes);
    the stores must hold the same images (ImageStore.same_images), which the caller checks."""
    readout = build_readout(protocol.readout, protocol)
    spec = task_spec(protocol)
    plans = _plans(methods[0][1], protocol, spec)
    members, total = [], None
    for method, store in methods:
        probs, accs = [], []
        for logits, labels in _episode_logits(method, store, plans, device, batch, autocast, protocol, readout):
            probs.append(fp32(logits).softmax(-1).cpu())
            accs.append(accuracy(logits, labels, 1).cpu())  # as evaluate() scores the member alone
        members.append(_result(method, protocol, spec, torch.cat(accs).numpy(), plans, readout))
        total = torch.cat(probs) if total is None else total + torch.cat(probs)
    labels = episode_labels(len(plans), spec.ways, spec.queries)
    ensemble = _result(methods[0][0], protocol, spec, accuracy(total, labels, 1).numpy(), plans, readout)
    ensemble.transductive = any(m.transductive for m in members)
    return ensemble, members


def _plans(store: ImageStore, protocol: EvalProtocol, spec: TaskSpec) -> EpisodePlans:
    if protocol.episodes < 1:
        raise MetalearnError(f"the number of evaluation episodes must be >= 1, got {protocol.episodes}")
    return EpisodeSampler(store, protocol.split, spec, protocol.seed).plans(0, protocol.episodes)


def _copies(protocol: EvalProtocol) -> TTAConfig | None:
    return protocol.tta if protocol.tta is not None and protocol.tta.copies > 1 else None


def _episode_logits(method: Method, store: ImageStore, plans: EpisodePlans, device: torch.device, batch: int,
                    autocast: contextlib.AbstractContextManager | None, protocol: EvalProtocol,
                    readout: Readout | None, cache: FeatureCache | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each batch of episodes' query logits [t, ways * queries, ways] (detached) and labels [t, ways * queries],
    the method in eval mode (restored after). An embedding method that encodes each image alone encodes every
    distinct image once; any other method predicts episode by episode."""
    tta = _copies(protocol)
    was_training = method.training
    method.eval()
    grad = torch.enable_grad() if getattr(method, "adapts_at_test", False) else torch.no_grad()
    try:
        if readout is not None:  # refused before any image is encoded
            readout.check(method, tta.copies if tta is not None else 1)
        with grad, (autocast or contextlib.nullcontext()):
            if readout is not None and readout.needs_images:  # adapts the encoder to each task: task by task
                return _logits_from_images(method, store, plans, device, tta, readout)
            if isinstance(method, EmbeddingMethod) and method.encodes_each_image_alone():
                return _logits_from_codes(method, store, plans, device, batch, tta, readout, cache)
            if tta is not None:
                raise MetalearnError(f"tta.copies={tta.copies} averages an embedding method's codes over augmented "
                                     f"copies of each image; {type(method).__name__} does not encode each image "
                                     f"alone; drop tta.copies=")
            if readout is not None:
                raise MetalearnError(f"readout={readout.name} classifies an embedding method's codes of single images; "
                                     f"{type(method).__name__} does not encode each image alone; drop readout=")
            out = []
            for start in range(0, len(plans), max(1, batch)):
                b = gather(store, plans.slice(start, start + batch), device)
                out.append((method.predict(b.support, b.support_labels, b.query, b.ways).detach(), b.query_labels))
            return out
    finally:
        method.train(was_training)


def _logits_from_images(method: EmbeddingMethod, store: ImageStore, plans: EpisodePlans, device: torch.device,
                        tta: TTAConfig | None, readout: Readout) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each episode's query logits from a readout that fine-tunes on the task's support images (one at a time)."""
    if tta is not None:
        raise MetalearnError(f"readout={readout.name} with finetune_backbone=true fine-tunes on the support images "
                             f"themselves; tta.copies={tta.copies} does not apply to it: drop tta.copies=")
    out = []
    for i in range(len(plans)):
        b = gather(store, plans.slice(i, i + 1), device)
        logits = readout.image_logits(method, b.support[0], b.support_labels[0], b.query[0], b.ways)
        out.append((logits.detach()[None], b.query_labels))
    return out


def _result(method: Method, protocol: EvalProtocol, spec: TaskSpec, per_episode: np.ndarray, plans: EpisodePlans,
            readout: Readout | None) -> EvalResult:
    bn = method.batch_norm if isinstance(method, EmbeddingMethod) and batch_norm_layers(method) else None
    tta = _copies(protocol)
    return EvalResult(protocol.split, spec, protocol.seed, per_episode.astype(np.float64), plans, bn,
                      getattr(method, "inner_steps_eval", None),
                      method.is_transductive() or (readout is not None and readout.transductive),
                      tta.record(readout) if tta is not None else None, readout.record() if readout is not None else {})


def encode_distinct(method: EmbeddingMethod, store: ImageStore, ids: np.ndarray, device: torch.device,
                    tta: TTAConfig | None = None, keep: bool = False,
                    cache: FeatureCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes of the distinct images among `ids` (any shape), and `ids` as rows of those codes.

    Episodes share images: 600 5-way 1-shot episodes with 15 queries name 48,000 images, but a
    test split holds a few thousand, so each is encoded once. Chunks keep about 2M input values
    (2,600 28x28 glyphs, 100 84x84 colour images) so activations stay a few hundred MB. With `tta`, each
    code is the mean over the image and `tta.copies - 1` random affine copies of it, drawn from `tta.seed`
    (the global random state is left as it was); with `keep` (a readout that keeps copies), each copy's code is
    kept: [N, copies, ...]. With a feature cache (and no copies), the codes are read from it (encoded into it the
    first time)."""
    if cache is not None and tta is None:
        return cache.lookup(ids, encoder_rows(method, store, device), device)
    distinct, inverse = np.unique(ids, return_inverse=True)
    chunk = max(16, 2**21 // int(np.prod(store.images.shape[1:])))
    copies = tta.copies if tta is not None else 1
    keep = keep and copies > 1
    codes = []
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        if copies > 1:
            from metalearn.tasks.augment import random_affine

            torch.manual_seed(tta.seed)
            background = float(store.normalize(torch.zeros(())))
        for i in range(0, len(distinct), chunk):
            x = store.load(distinct[i:i + chunk], device)
            total = fp32(method.encode(x))
            kept = [total]
            for _ in range(copies - 1):
                code = fp32(method.encode(random_affine(x, tta, background)))
                if keep:
                    kept.append(code)
                else:
                    total = total + code
            codes.append(torch.stack(kept, 1) if keep else total / copies)
    return torch.cat(codes), torch.from_numpy(inverse.reshape(ids.shape)).to(device)


def _logits_from_codes(method: EmbeddingMethod, store: ImageStore, plans: EpisodePlans, device: torch.device,
                       batch: int, tta: TTAConfig | None, readout: Readout | None,
                       cache: FeatureCache | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each batch of episodes' query logits and labels, every image encoded once (the same logits as predict, up
    to float rounding)."""
    ways, shots, queries = plans.support.shape[1], plans.support.shape[2], plans.query.shape[2]
    classify = method.head if readout is None else (lambda zs, ys, zq, w: readout.logits(method, zs, ys, zq, w))
    codes, rows = encode_distinct(method, store, plans.image_ids(), device, tta,
                                  keep=readout is not None and readout.keeps_copies, cache=cache)
    out = []
    for start in range(0, len(plans), max(1, batch)):
        z = codes[rows[start:start + batch]]  # [t, ways*(shots+queries), ...]
        t = z.shape[0]
        logits = classify(z[:, : ways * shots], episode_labels(t, ways, shots, device), z[:, ways * shots:], ways)
        out.append((logits.detach(), episode_labels(t, ways, queries, device)))
    return out


@dataclass
class VariableResult:
    """Accuracy on variable episodes (Meta-Dataset's sampler): per episode, with each episode's ways and shots."""

    split: str
    seed: int
    per_episode: np.ndarray
    ways: np.ndarray  # [E]
    support_sizes: np.ndarray  # [E]: images in each support set
    queries: np.ndarray  # [E]: queries per class
    plans: VariablePlans
    transductive: bool = False

    @property
    def accuracy(self) -> float:
        return float(self.per_episode.mean())

    @property
    def ci95(self) -> float:
        return t_interval(self.per_episode).half_width

    def summary(self) -> dict:
        return {"split": self.split, "sampler": "variable", "episodes": len(self.per_episode), "seed": self.seed,
                "accuracy": self.accuracy, "ci95": self.ci95, "episodes_digest": self.plans.digest(),
                "ways_mean": float(self.ways.mean()), "ways_range": [int(self.ways.min()), int(self.ways.max())],
                "support_mean": float(self.support_sizes.mean()),
                "support_range": [int(self.support_sizes.min()), int(self.support_sizes.max())],
                **({"transductive": True} if self.transductive else {})}

    def save(self, folder: Path, name: str, extra: dict | None = None) -> Path:
        with atomic_open(folder / f"{name}_episodes.npz") as f:
            np.savez_compressed(f, **self.plans.to_dict())
        path = folder / f"{name}.json"
        write_text(path, json.dumps({**self.summary(), "per_episode": self.per_episode.tolist(),
                                     "ways": self.ways.tolist(), "support_sizes": self.support_sizes.tolist(),
                                     **(extra or {})}, indent=1))
        return path


def evaluate_variable(method: Method, store: ImageStore, split: str, episodes: int, seed: int, device: torch.device,
                      autocast: contextlib.AbstractContextManager | None = None,
                      cache: FeatureCache | None = None) -> VariableResult:
    """Accuracy of `method` on `episodes` variable episodes of `split` (metalearn.tasks.variable), one episode at
    a time: their shapes differ, so each is its own forward pass (no padding to score the same)."""
    if episodes < 1:
        raise MetalearnError(f"the number of evaluation episodes must be >= 1, got {episodes}")
    sampler = VariableSampler(store, split, seed)
    try:
        method.check_variable(min(sampler.rules.max_ways, len(sampler.classes)))
    except MetalearnError as e:
        raise MetalearnError(f"{e}; score it on fixed episodes (drop variable=true), or use method=proto_maml, whose "
                             f"head is built for each task") from None
    plans = sampler.plans(0, episodes)
    was_training = method.training
    method.eval()
    grad = torch.enable_grad() if getattr(method, "adapts_at_test", False) else torch.no_grad()
    accs = []
    try:
        with grad, (autocast or contextlib.nullcontext()):
            if isinstance(method, EmbeddingMethod) and method.encodes_each_image_alone():
                accs = _variable_from_codes(method, store, plans, device, cache)
            else:
                for episode in plans.episodes:
                    b = gather_one(store, episode, device)
                    logits = method.predict(b.support, b.support_labels, b.query, b.ways).detach()
                    accs.append(float(accuracy(logits, b.query_labels)))
    finally:
        method.train(was_training)
    eps = plans.episodes
    return VariableResult(split, seed, np.array(accs, dtype=np.float64), np.array([e.ways for e in eps]),
                          np.array([len(e.support) for e in eps]),
                          np.array([len(e.query) // e.ways for e in eps]), plans, method.is_transductive())


def _variable_from_codes(method: EmbeddingMethod, store: ImageStore, plans: VariablePlans,
                         device: torch.device, cache: FeatureCache | None = None) -> list[float]:
    """Each variable episode's accuracy from codes of the distinct images of all episodes, each encoded once (as
    the fixed episodes' path does: the same logits as predict, up to float rounding)."""
    ids = np.concatenate([np.concatenate([e.support, e.query]) for e in plans.episodes])
    codes, rows = encode_distinct(method, store, ids, device, cache=cache)
    accs, at = [], 0
    for e in plans.episodes:
        s, q = len(e.support), len(e.query)
        z = codes[rows[at:at + s + q]]
        at += s + q
        labels = torch.as_tensor(e.support_labels, device=device)[None]
        logits = method.head(z[None, :s], labels, z[None, s:], e.ways)
        accs.append(float(accuracy(logits, torch.as_tensor(e.query_labels, device=device)[None])))
    return accs
