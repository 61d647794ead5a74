"""readout=finetune: a linear classifier trained on each task's support codes, the encoder frozen: the fine-tuning
baseline of Chen et al. 2019 ("Baseline": a new linear layer on the support set, SGD with momentum 0.9 and weight
decay 0.001) that BSCD-FSL (Guo et al. 2020) finds beats most meta-learners across domains. Its steps and
learning rate are protocol options (metalearn-eval finetune_steps=, finetune_lr=), so they are part of the
result's name. Inductive: each query is classified alone.

finetune_backbone=true fine-tunes a copy of the encoder with the classifier, on the support images themselves
(BSCD-FSL's "fine-tuning" row, Guo et al. 2020 §4): a fresh copy for each task, its batch norms with their running
statistics (so no query's statistics enter), the queries encoded once at the end. It costs a forward and a
backward pass of the support set per step and task, where the linear probe costs one encoding in all."""

from __future__ import annotations

import copy
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


def tunable_copy(method: Any, encoder_only: bool = False) -> tuple[Any, list[torch.Tensor]]:
    """A copy of `method` to fine-tune on one task, in eval mode (running batch-norm statistics: nothing of the
    queries enters), and the weights that train: all of them, or its encoder's (`backbone`) alone."""
    model = copy.deepcopy(method)
    model.eval()
    part = getattr(model, "backbone", model) if encoder_only else model
    params = [p for p in part.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    return model, params


def finetuned_logits(method: Any, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, ways: int, steps: int,
                     lr: float) -> torch.Tensor:
    """One task's support images [S, ...], labels [S] and query images [Q, ...] -> query logits [Q, ways]: a copy of
    the method's encoder and a zero-initialised linear layer, `steps` full-batch SGD steps on the support
    cross-entropy together; `method` itself is left as it was."""
    model, params = tunable_copy(method)
    with torch.no_grad():
        d = fp32(model.encode(xs[:1])).flatten(1).shape[1]
    weight = torch.zeros(ways, d, device=xs.device, requires_grad=True)
    bias = torch.zeros(ways, device=xs.device, requires_grad=True)
    optimizer = torch.optim.SGD([*params, weight, bias], lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            z = fp32(model.encode(xs)).flatten(1)
            nn.functional.cross_entropy(z @ weight.T + bias, ys).backward()
            optimizer.step()
    with torch.no_grad():
        return fp32(model.encode(xq)).flatten(1) @ weight.T + bias


@READOUTS.register("finetune")
class FinetuneReadout(Readout):
    steps = 100
    lr = 0.01
    backbone = False

    def configure(self, protocol: Any) -> None:
        self.steps = int(getattr(protocol, "finetune_steps", self.steps))
        self.lr = float(getattr(protocol, "finetune_lr", self.lr))
        self.backbone = bool(getattr(protocol, "finetune_backbone", self.backbone))

    @property
    def needs_images(self) -> bool:
        return self.backbone

    @property
    def label(self) -> str:
        return f"finetune ({self.steps} steps, lr {self.lr:g}{', the encoder too' if self.backbone else ''})"

    @property
    def file_tag(self) -> str:
        return f"_readout-finetune-{self.steps}-{self.lr:g}{'-backbone' if self.backbone else ''}"

    def record(self) -> dict:
        return {"readout": self.name, "finetune": {"steps": self.steps, "lr": self.lr,
                                                   **({"backbone": True} if self.backbone else {})}}

    def image_logits(self, method, xs, ys, xq, ways):
        return finetuned_logits(method, xs, ys, xq, ways, self.steps, self.lr)

    def logits(self, method, zs, support_labels, zq, ways):
        return linear_probe(zs.flatten(2), support_labels, zq.flatten(2), ways, self.steps, self.lr)
