"""readout=finetune: a linear classifier trained on each task's support codes, the encoder frozen: the fine-tuning
baseline of Chen et al. 2019 ("Baseline": a new linear layer on the support set, SGD with momentum 0.9 and weight
decay 0.001) that BSCD-FSL (Guo et al. 2020) finds beats most meta-learners across domains. Its steps and
learning rate are protocol options (metalearn-eval finetune_steps=, finetune_lr=), so they are part of the
result's name. Inductive: each query is classified alone. Fine-tuning the encoder itself is not done here."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metalearn.methods.base import fp32
from metalearn.readouts import READOUTS, Readout

WEIGHT_DECAY = 0.001
MOMENTUM = 0.9


def linear_probe(zs: torch.Tensor, labels: torch.Tensor, zq: torch.Tensor, ways: int, steps: int,
                 lr: float) -> torch.Tensor:
    """Support codes [T, S, D], labels [T, S], query codes [T, Q, D] -> query logits [T, Q, ways] of a linear
    layer per task, from zero, after `steps` full-batch SGD steps on the support cross-entropy."""
    zs, zq = fp32(zs).detach(), fp32(zq).detach()
    t, d = zs.shape[0], zs.shape[-1]
    weight = torch.zeros(t, ways, d, dtype=zs.dtype, device=zs.device, requires_grad=True)
    bias = torch.zeros(t, ways, dtype=zs.dtype, device=zs.device, requires_grad=True)
    optimizer = torch.optim.SGD([weight, bias], lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            logits = torch.einsum("tsd,twd->tsw", zs, weight) + bias[:, None]
            # summed over tasks: each task's classifier gets its own mean loss's gradient
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / zs.shape[1]
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return torch.einsum("tqd,twd->tqw", zq, weight) + bias[:, None]


@READOUTS.register("finetune")
class FinetuneReadout(Readout):
    steps = 100
    lr = 0.01

    def configure(self, protocol: Any) -> None:
        self.steps = int(getattr(protocol, "finetune_steps", self.steps))
        self.lr = float(getattr(protocol, "finetune_lr", self.lr))

    @property
    def file_tag(self) -> str:
        return f"_readout-finetune-{self.steps}-{self.lr:g}"

    def record(self) -> dict:
        return {"readout": self.name, "finetune": {"steps": self.steps, "lr": self.lr}}

    def logits(self, method, zs, support_labels, zq, ways):
        return linear_probe(zs.flatten(2), support_labels, zq.flatten(2), ways, self.steps, self.lr)
