"""Few-shot evaluation: mean accuracy and 95% CI over a fixed list of episodes."""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from metalearn.config import TTAConfig
from metalearn.data.store import ImageStore
from metalearn.engine.copy_match import chamfer_logits
from metalearn.errors import MetalearnError
from metalearn.files import atomic_open, write_text
from metalearn.methods.base import EmbeddingMethod, Method, accuracy, fp32
from metalearn.methods.task_norm import batch_norm_layers
from metalearn.stats import t_interval
from metalearn.tasks.episodes import EpisodePlans, EpisodeSampler, TaskSpec, episode_labels, gather


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
    tta: dict | None = None  # test-time augmentation (metalearn.config.TTAConfig as a dict), when used
    head: str | None = None  # another head than the method's own on its codes (metalearn-eval head=tim)

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
                **({"tta": self.tta} if self.tta else {}), **({"head": self.head} if self.head else {})}

    def save(self, folder: Path, name: str, extra: dict | None = None) -> Path:
        """<name>.json (summary + per-episode accuracies, + `extra`) and <name>_episodes.npz (the plans)."""
        with atomic_open(folder / f"{name}_episodes.npz") as f:
            np.savez_compressed(f, **self.plans.to_dict())
        path = folder / f"{name}.json"
        write_text(path, json.dumps({**self.summary(), "per_episode": self.per_episode.tolist(), **(extra or {})},
                                     indent=1))
        return path


HEADS = ("tim",)  # metalearn-eval head=: classifiers of any embedding method's codes


def check_head(head: str | None) -> None:
    if head is not None and head not in HEADS:
        raise MetalearnError(f"head={head!r} is not one of: {', '.join(HEADS)} (or leave it out for the method's own head)")


def evaluate(method: Method, store: ImageStore, split: str, spec: TaskSpec, episodes: int, seed: int,
             device: torch.device, batch: int = 50, autocast: contextlib.AbstractContextManager | None = None,
             plans: EpisodePlans | None = None, tta: TTAConfig | None = None, head: str | None = None) -> EvalResult:
    """Accuracy of `method` on `episodes` episodes of `split`, drawn from `seed` (or the given plans); with
    `tta` (copies > 1), an embedding method's codes averaged over augmented copies of each image; with
    head="tim", its codes classified by TIM's transductive inference instead of its own head."""
    plans = _plans(store, split, spec, episodes, seed, plans, head)
    accs = [accuracy(logits, labels, 1).cpu()
            for logits, labels in _episode_logits(method, store, plans, device, batch, autocast, tta, head)]
    return _result(method, split, spec, seed, torch.cat(accs).numpy().astype(np.float64), plans, tta, head)


def evaluate_ensemble(methods: list[tuple[Method, ImageStore]], split: str, spec: TaskSpec, episodes: int,
                      seed: int, device: torch.device, batch: int = 50,
                      autocast: contextlib.AbstractContextManager | None = None, tta: TTAConfig | None = None,
                      head: str | None = None) -> tuple[EvalResult, list[EvalResult]]:
    """An ensemble's accuracy: each query's class probabilities (the softmax of each member's logits) averaged
    over the members, on the first member's store's episodes; and each member's own result on the same
    episodes. Each member reads the images through its own store (members may render them at other sizes);
    the stores must hold the same images (ImageStore.same_images), which the caller checks."""
    first_store = methods[0][1]
    plans = _plans(first_store, split, spec, episodes, seed, None, head)
    members, total = [], None
    for method, store in methods:
        probs, accs = [], []
        for logits, labels in _episode_logits(method, store, plans, device, batch, autocast, tta, head):
            probs.append(fp32(logits).softmax(-1).cpu())
            accs.append(accuracy(logits, labels, 1).cpu())  # as evaluate() scores the member alone
        members.append(_result(method, split, spec, seed, torch.cat(accs).numpy(), plans, tta, head))
        total = torch.cat(probs) if total is None else total + torch.cat(probs)
    labels = episode_labels(len(plans), spec.ways, spec.queries)
    per_episode = accuracy(total, labels, 1).numpy()
    ensemble = _result(methods[0][0], split, spec, seed, per_episode, plans, tta, head)
    ensemble.transductive = any(m.transductive for m in members)
    return ensemble, members


def _plans(store: ImageStore, split: str, spec: TaskSpec, episodes: int, seed: int, plans: EpisodePlans | None,
           head: str | None) -> EpisodePlans:
    if plans is None and episodes < 1:
        raise MetalearnError(f"the number of evaluation episodes must be >= 1, got {episodes}")
    check_head(head)
    return EpisodeSampler(store, split, spec, seed).plans(0, episodes) if plans is None else plans


def _episode_logits(method: Method, store: ImageStore, plans: EpisodePlans, device: torch.device, batch: int,
                    autocast: contextlib.AbstractContextManager | None, tta: TTAConfig | None,
                    head: str | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each batch of episodes' query logits [t, ways * queries, ways] (detached) and labels [t, ways * queries],
    the method in eval mode (restored after). An embedding method that encodes each image alone encodes every
    distinct image once; any other method predicts episode by episode."""
    was_training = method.training
    method.eval()
    grad = torch.enable_grad() if getattr(method, "adapts_at_test", False) else torch.no_grad()
    try:
        with grad, (autocast or contextlib.nullcontext()):
            if isinstance(method, EmbeddingMethod) and method.encodes_each_image_alone():
                return _logits_from_codes(method, store, plans, device, batch, tta, head)
            if tta is not None and tta.copies > 1:
                raise MetalearnError(f"tta.copies={tta.copies} averages an embedding method's codes over augmented "
                                     f"copies of each image; {type(method).__name__} does not encode each image "
                                     f"alone; drop tta.copies=")
            if head is not None:
                raise MetalearnError(f"head={head} classifies an embedding method's codes of single images; "
                                     f"{type(method).__name__} does not encode each image alone; drop head=")
            out = []
            for start in range(0, len(plans), max(1, batch)):
                b = gather(store, plans.slice(start, start + batch), device)
                out.append((method.predict(b.support, b.support_labels, b.query, b.ways).detach(), b.query_labels))
            return out
    finally:
        method.train(was_training)


def _result(method: Method, split: str, spec: TaskSpec, seed: int, per_episode: np.ndarray, plans: EpisodePlans,
            tta: TTAConfig | None, head: str | None) -> EvalResult:
    bn = method.batch_norm if isinstance(method, EmbeddingMethod) and batch_norm_layers(method) else None
    return EvalResult(split, spec, seed, per_episode.astype(np.float64), plans, bn,
                      getattr(method, "inner_steps_eval", None), method.is_transductive() or head == "tim",
                      asdict(tta) if tta is not None and tta.copies > 1 else None, head)


def encode_distinct(method: EmbeddingMethod, store: ImageStore, ids: np.ndarray, device: torch.device,
                    tta: TTAConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes of the distinct images among `ids` (any shape), and `ids` as rows of those codes.

    Episodes share images: 600 5-way 1-shot episodes with 15 queries name 48,000 images, but a
    test split holds a few thousand, so each is encoded once. Chunks keep about 2M input values
    (2,600 28x28 glyphs, 100 84x84 colour images) so activations stay a few hundred MB. With `tta`, each
    code is the mean over the image and `tta.copies - 1` random affine copies of it, drawn from `tta.seed`
    (the global random state is left as it was). With tta.match="chamfer" each code is kept: [N, copies, ...]."""
    distinct, inverse = np.unique(ids, return_inverse=True)
    chunk = max(16, 2**21 // int(np.prod(store.images.shape[1:])))
    copies = tta.copies if tta is not None else 1
    keep = tta is not None and tta.match == "chamfer"
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


def tim_on_codes(zs: torch.Tensor, support_labels: torch.Tensor, zq: torch.Tensor, ways: int) -> torch.Tensor:
    """head=tim: TIM-GD's inference (Boudiaf et al. 2020, the paper's defaults) on any method's flattened codes,
    as the paper applies it to any trained encoder. Transductive: a query's class depends on the other queries."""
    from metalearn.methods.tim import tim_head

    return tim_head(zs.flatten(2), support_labels, zq.flatten(2), ways)


def chamfer_scale(method: EmbeddingMethod, head: str | None) -> float:
    """tta.match=chamfer stands in for a cosine head, so it takes that head's temperature; other heads are refused."""
    scale = method.cosine_temperature()
    if head is not None or scale is None:
        what = f"head={head}" if head is not None else f"{type(method).__name__}'s head"
        raise MetalearnError(f"tta.match=chamfer compares copies by cosine in place of a cosine head (meta_baseline's), "
                             f"and {what} is not one; drop tta.match or evaluate a meta_baseline run")
    return scale


def _logits_from_codes(method: EmbeddingMethod, store: ImageStore, plans: EpisodePlans, device: torch.device,
                       batch: int, tta: TTAConfig | None = None,
                       head: str | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each batch of episodes' query logits and labels, every image encoded once (the same logits as predict, up
    to float rounding)."""
    ways, shots, queries = plans.support.shape[1], plans.support.shape[2], plans.query.shape[2]
    classify = tim_on_codes if head == "tim" else method.head
    if tta is not None and tta.match == "chamfer":  # refused before any encoding when the head cannot take it
        classify = functools.partial(chamfer_logits, scale=chamfer_scale(method, head))
    codes, rows = encode_distinct(method, store, plans.image_ids(), device, tta)
    out = []
    for start in range(0, len(plans), max(1, batch)):
        z = codes[rows[start:start + batch]]  # [t, ways*(shots+queries), ...]
        t = z.shape[0]
        logits = classify(z[:, : ways * shots], episode_labels(t, ways, shots, device), z[:, ways * shots:], ways)
        out.append((logits.detach(), episode_labels(t, ways, queries, device)))
    return out
