"""Few-shot evaluation: mean accuracy and 95% CI over a fixed list of episodes."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metalearn.data.store import ImageStore
from metalearn.episodes import EpisodePlans, EpisodeSampler, TaskSpec, gather
from metalearn.methods.base import Method


@dataclass
class EvalResult:
    split: str
    spec: TaskSpec
    seed: int
    per_episode: np.ndarray  # accuracy of each episode, in plan order
    plans: EpisodePlans

    @property
    def accuracy(self) -> float:
        return float(self.per_episode.mean())

    @property
    def ci95(self) -> float:
        """1.96 * std / sqrt(n), the convention of the few-shot literature."""
        return float(1.96 * self.per_episode.std() / np.sqrt(len(self.per_episode)))

    def summary(self) -> dict:
        return {"split": self.split, "ways": self.spec.ways, "shots": self.spec.shots, "queries": self.spec.queries,
                "episodes": len(self.per_episode), "seed": self.seed, "accuracy": self.accuracy, "ci95": self.ci95,
                "episodes_digest": self.plans.digest()}

    def save(self, folder: Path, name: str) -> Path:
        """<name>.json (summary + per-episode accuracies) and <name>_episodes.npz (the plans)."""
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / f"{name}_episodes.npz", **self.plans.to_dict())
        path = folder / f"{name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({**self.summary(), "per_episode": self.per_episode.tolist()}, indent=1))
        tmp.replace(path)
        return path


def evaluate(method: Method, store: ImageStore, split: str, spec: TaskSpec, episodes: int, seed: int,
             device: torch.device, batch: int = 50, autocast: contextlib.AbstractContextManager | None = None,
             plans: EpisodePlans | None = None) -> EvalResult:
    """Accuracy of `method` on `episodes` episodes of `split`, drawn from `seed` (or the given plans)."""
    if plans is None:
        plans = EpisodeSampler(store, split, spec, seed).plans(0, episodes)
    was_training = method.training
    method.eval()
    accs = []
    grad = torch.enable_grad() if getattr(method, "adapts_at_test", False) else torch.no_grad()
    with grad, (autocast or contextlib.nullcontext()):
        for start in range(0, len(plans), max(1, batch)):
            b = gather(store, plans.slice(start, start + batch), device)
            logits = method.predict(b.support, b.support_labels, b.query, b.ways)
            accs.append((logits.argmax(-1) == b.query_labels).float().mean(1).cpu())
    method.train(was_training)
    return EvalResult(split, spec, seed, torch.cat(accs).numpy().astype(np.float64), plans)
