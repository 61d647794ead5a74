"""Reptile (Nichol et al. 2018): adapt a copy of the weights on each task with an ordinary inner
optimiser, then move the weights towards the adapted ones,

    theta <- theta + epsilon * mean_i(phi_i - theta).

The outer move is expressed as a gradient, grad = theta - mean_i(phi_i), handed to the engine's
optimiser: plain SGD with lr = epsilon gives exactly the formula above, and the engine's `linear`
schedule anneals epsilon to zero (meta-step annealing), with checkpointing and resume for free.

The inner Adam is written out (beta1 = 0, as the paper) so that its state can follow the
reference code (openai/supervised-reptile): there the Adam moments and step count are graph
variables that are never reset between tasks or meta-steps, and every test episode starts from
the state training left. That is `inner_state="persistent"`; `"fresh"` starts a new optimiser
on every task. The two behave very differently: a fresh Adam's first steps are sign-gradient
steps of size lr on every weight, a persistent one scales each weight's step by a long-run
estimate of its gradient's magnitude. The persistent state lives in buffers, so it is
checkpointed and a resumed run continues exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from metalearn.methods.base import AdaptingMethod, BuildContext, accuracy, on_load
from metalearn.methods.inner_loop import Params, call, param_key
from metalearn.registry import METHODS
from metalearn.tasks.episodes import EpisodeBatch

ADAM_BETA2, ADAM_EPS = 0.999, 1e-8


class Reptile(AdaptingMethod):
    name = "reptile"

    def __init__(self, backbone: nn.Module, feature_dim: int, ways: int, inner_lr: float, inner_steps: int,
                 inner_steps_eval: int, inner_batch: int, inner_optimizer: str = "adam",
                 inner_state: str = "persistent"):
        super().__init__()
        self.model = nn.Sequential(backbone, nn.Linear(feature_dim, ways))
        self.ways, self.inner_lr = ways, inner_lr
        self.inner_steps, self.inner_steps_eval = inner_steps, inner_steps_eval
        self.inner_batch, self.inner_optimizer, self.inner_state = inner_batch, inner_optimizer, inner_state
        for n, p in self.model.named_parameters():  # Adam's second moments, kept when inner_state=persistent
            self.register_buffer(f"adam_v__{param_key(n)}", torch.zeros_like(p))
        self.register_buffer("adam_t", torch.zeros((), dtype=torch.long))
        on_load(self, _default_adam_state)  # checkpoints from before it existed

    # ------------------------------------------------------------ the inner optimiser
    def _adam_state(self) -> tuple[Params, int]:
        if self.inner_state == "fresh":
            return {n: torch.zeros_like(p) for n, p in self.model.named_parameters()}, 0
        return ({n: getattr(self, f"adam_v__{param_key(n)}").clone() for n, _ in self.model.named_parameters()},
                int(self.adam_t))

    def _save_adam_state(self, v: Params, t: int) -> None:
        if self.inner_state == "persistent":
            for n, value in v.items():
                getattr(self, f"adam_v__{param_key(n)}").copy_(value)
            self.adam_t.fill_(t)

    def inner_train(self, x: torch.Tensor, y: torch.Tensor, steps: int, generator: torch.Generator | None = None,
                    state: tuple[Params, int] | None = None) -> tuple[Params, tuple[Params, int]]:
        """`steps` inner-optimiser steps on minibatches of (x, y), on a detached copy of the weights.

        Returns the adapted weights and the optimiser state (Adam's second moments and step count)
        after them; `state` is where that state starts (default: zero, a fresh optimiser).
        """
        params = {n: p.detach().clone().requires_grad_() for n, p in self.model.named_parameters()}
        v, t = state if state is not None else ({n: torch.zeros_like(p) for n, p in params.items()}, 0)
        n_examples = x.shape[0]
        order = torch.randperm(n_examples, generator=generator)
        for k in range(steps):
            idx = order[(torch.arange(self.inner_batch) + k * self.inner_batch) % n_examples]
            loss = nn.functional.cross_entropy(call(self.model, params, x[idx]), y[idx])
            grads = torch.autograd.grad(loss, list(params.values()))
            t += 1
            with torch.no_grad():
                for (name, p), g in zip(params.items(), grads, strict=True):
                    if self.inner_optimizer == "sgd":
                        p -= self.inner_lr * g
                        continue
                    v[name] = ADAM_BETA2 * v[name] + (1 - ADAM_BETA2) * g * g
                    v_hat = v[name] / (1 - ADAM_BETA2 ** t)
                    p -= self.inner_lr * g / (v_hat.sqrt() + ADAM_EPS)
        return {k: p.detach() for k, p in params.items()}, (v, t)

    # ------------------------------------------------------------ the method interface
    def graph_supported(self, batch: EpisodeBatch) -> bool:
        return False  # the step is SGD on each task followed by an interpolation, not a loss's gradient

    def train_step(self, batch: EpisodeBatch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        theta = dict(self.model.named_parameters())
        mean_phi = {n: torch.zeros_like(p) for n, p in theta.items()}
        losses, accs = [], []
        state = self._adam_state()
        for t in range(batch.tasks):
            x = torch.cat([batch.support[t], batch.query[t]])  # Reptile learns from all of the task's examples
            y = torch.cat([batch.support_labels[t], batch.query_labels[t]])
            phi, state = self.inner_train(x, y, self.inner_steps,
                                          state=state if self.inner_state == "persistent" else None)
            for n in mean_phi:
                mean_phi[n] += phi[n] / batch.tasks
            with torch.no_grad():  # logged: the fit of the adapted weights to the task's query examples
                logits = call(self.model, phi, batch.query[t])
                losses.append(nn.functional.cross_entropy(logits, batch.query_labels[t]))
                accs.append(accuracy(logits, batch.query_labels[t]))
        optimizer.zero_grad(set_to_none=True)
        for n, p in theta.items():
            p.grad = p.detach() - mean_phi[n]
        if all(torch.isfinite(g.grad).all() for g in theta.values()):
            optimizer.step()
            self._save_adam_state(*state)
        return {"loss": float(torch.stack(losses).mean()), "accuracy": float(torch.stack(accs).mean())}

    def adapt_for_test(self, support: torch.Tensor, labels: torch.Tensor) -> Params:
        # a fixed minibatch order, and the optimiser state training left (never written back), so an
        # episode scores the same in any evaluation batch
        phi, _ = self.inner_train(support, labels, self.inner_steps_eval, torch.Generator().manual_seed(0),
                                  state=self._adam_state())
        return phi

    def predict_task(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            phi = self.adapt_for_test(support, labels)
        return call(self.model, phi, query).detach()


def _default_adam_state(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints from before the Adam state existed get a fresh one; those from when Reptile was built on
    MAML carry MAML's batching buffers, which Reptile never used."""
    for name in ("batching_path", "uses_vmap", "meta_steps"):
        state_dict.pop(prefix + name, None)
    for name, buffer in module.named_buffers(recurse=False):
        if name.startswith("adam_"):
            state_dict.setdefault(prefix + name, torch.zeros_like(buffer))


@METHODS.register("reptile")
def build(cfg, ctx: BuildContext) -> Reptile:
    backbone = ctx.backbone(cfg, bn_running_stats=cfg.batch_norm == "running")
    return Reptile(backbone, ctx.feature_dim(backbone), ctx.ways, cfg.inner_lr, cfg.inner_steps, cfg.inner_steps_eval,
                   cfg.inner_batch, cfg.inner_optimizer, cfg.inner_state)
