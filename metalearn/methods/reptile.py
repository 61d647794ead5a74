"""Reptile (Nichol et al. 2018): adapt a copy of the weights on each task with an ordinary inner
optimiser, then move the weights towards the adapted ones,

    theta <- theta + epsilon * mean_i(phi_i - theta).

The outer move is expressed as a gradient, grad = theta - mean_i(phi_i), handed to the engine's
optimiser: plain SGD with lr = epsilon gives exactly the formula above, and the engine's `linear`
schedule anneals epsilon to zero (meta-step annealing), with checkpointing and resume for free.
"""

from __future__ import annotations

import torch
from torch import nn

from metalearn.episodes import EpisodeBatch
from metalearn.methods.inner_loop import Params, call
from metalearn.methods.maml import MAML


class Reptile(MAML):
    def __init__(self, backbone: nn.Module, feature_dim: int, ways: int, inner_lr: float, inner_steps: int,
                 inner_steps_eval: int, inner_batch: int, inner_optimizer: str = "adam"):
        super().__init__(backbone, feature_dim, ways, inner_lr, inner_steps, inner_steps_eval, first_order=True,
                         name="reptile")
        self.inner_batch, self.inner_optimizer = inner_batch, inner_optimizer

    def inner_train(self, x: torch.Tensor, y: torch.Tensor, steps: int, generator: torch.Generator | None = None) -> Params:
        """`steps` inner-optimiser steps on minibatches of (x, y), on a detached copy of the weights."""
        params = {n: p.detach().clone().requires_grad_() for n, p in self.model.named_parameters()}
        opt = (torch.optim.Adam(params.values(), lr=self.inner_lr, betas=(0.0, 0.999))
               if self.inner_optimizer == "adam" else torch.optim.SGD(params.values(), lr=self.inner_lr))
        n = x.shape[0]
        order = torch.randperm(n, generator=generator)
        for k in range(steps):
            idx = order[(torch.arange(self.inner_batch) + k * self.inner_batch) % n]
            loss = nn.functional.cross_entropy(call(self.model, params, x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return {k: v.detach() for k, v in params.items()}

    def train_step(self, batch: EpisodeBatch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        theta = dict(self.model.named_parameters())
        mean_phi = {n: torch.zeros_like(p) for n, p in theta.items()}
        losses, accs = [], []
        for t in range(batch.tasks):
            x = torch.cat([batch.support[t], batch.query[t]])  # Reptile learns from all of the task's examples
            y = torch.cat([batch.support_labels[t], batch.query_labels[t]])
            phi = self.inner_train(x, y, self.inner_steps)
            for n in mean_phi:
                mean_phi[n] += phi[n] / batch.tasks
            with torch.no_grad():  # logged: the fit of the adapted weights to the task's query examples
                logits = call(self.model, phi, batch.query[t])
                losses.append(nn.functional.cross_entropy(logits, batch.query_labels[t]))
                accs.append((logits.argmax(-1) == batch.query_labels[t]).float().mean())
        optimizer.zero_grad(set_to_none=True)
        for n, p in theta.items():
            p.grad = p.detach() - mean_phi[n]
        if all(torch.isfinite(g.grad).all() for g in theta.values()):
            optimizer.step()
        return {"loss": float(torch.stack(losses).mean()), "accuracy": float(torch.stack(accs).mean())}

    def adapt_for_test(self, support: torch.Tensor, labels: torch.Tensor) -> Params:
        # a fixed minibatch order, so an episode scores the same in any evaluation batch
        return self.inner_train(support, labels, self.inner_steps_eval, torch.Generator().manual_seed(0))
