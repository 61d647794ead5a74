"""MAML (Finn et al. 2017) and the methods that differ from it by a switch:

- ``fomaml``: first-order MAML, the inner gradient treated as a constant;
- ``anil`` (Raghu et al. 2020): the inner loop adapts the head only;
- ``metasgd`` (Li et al. 2017): a learned learning rate for every parameter entry.

The outer step is the engine's optimiser (Adam by default) on the query loss at the adapted
weights, averaged over the meta-batch.
"""

from __future__ import annotations

import torch
from torch import nn

from metalearn.episodes import EpisodeBatch, TaskSpec
from metalearn.errors import MetalearnError
from metalearn.methods.base import Method
from metalearn.methods.inner_loop import Params, adapt, call


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys may not contain dots


class MAML(Method):
    adapts_at_test = True

    def __init__(self, backbone: nn.Module, feature_dim: int, ways: int, inner_lr: float, inner_steps: int,
                 inner_steps_eval: int, first_order: bool = False, adapt_head_only: bool = False,
                 learn_inner_lr: bool = False, name: str = "maml"):
        super().__init__()
        self.name = name
        self.model = nn.Sequential(backbone, nn.Linear(feature_dim, ways))
        self.ways, self.inner_lr, self.first_order = ways, inner_lr, first_order
        self.inner_steps, self.inner_steps_eval = inner_steps, inner_steps_eval
        self.adapted = [n for n, _ in self.model.named_parameters() if not adapt_head_only or n.startswith("1.")]
        self.inner_lrs = nn.ParameterDict({_key(n): nn.Parameter(torch.full_like(p, inner_lr))
                                           for n, p in self.model.named_parameters() if n in self.adapted}
                                          ) if learn_inner_lr else None

    def _lr(self, name: str, step: int) -> torch.Tensor | float:
        return self.inner_lrs[_key(name)] if self.inner_lrs is not None else self.inner_lr

    def check_task(self, spec: TaskSpec) -> None:
        if spec.ways != self.ways:
            raise MetalearnError(f"{self.name}'s classifier head has {self.ways} outputs (sampler.train_ways), so it can "
                                 f"only be evaluated {self.ways}-way, not {spec.ways}-way; train with "
                                 f"sampler.train_ways={spec.ways} for that.")

    def adapt(self, support: torch.Tensor, labels: torch.Tensor, steps: int, first_order: bool) -> Params:
        params = dict(self.model.named_parameters())
        return adapt(self.model, params, support, labels, steps, self._lr, self.adapted, first_order)

    def task_loss(self, batch: EpisodeBatch, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Query loss and logits of task t at the weights adapted on its support set."""
        params = self.adapt(batch.support[t], batch.support_labels[t], self.inner_steps, self.first_order)
        logits = call(self.model, params, batch.query[t])
        return nn.functional.cross_entropy(logits.float(), batch.query_labels[t]), logits

    def train_step(self, batch: EpisodeBatch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Backward task by task (one graph alive at a time), one outer step for the meta-batch."""
        optimizer.zero_grad(set_to_none=True)
        losses, accs = [], []
        for t in range(batch.tasks):
            loss, logits = self.task_loss(batch, t)
            if torch.isfinite(loss):
                (loss / batch.tasks).backward()
            losses.append(loss.detach())
            accs.append((logits.argmax(-1) == batch.query_labels[t]).float().mean())
        loss = torch.stack(losses).mean()
        if torch.isfinite(loss):
            optimizer.step()
        return {"loss": float(loss), "accuracy": float(torch.stack(accs).mean())}

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        out = [self.task_loss(batch, t) for t in range(batch.tasks)]
        return torch.stack([o[0] for o in out]).mean(), torch.stack([o[1] for o in out])

    def predict(self, support, support_labels, query, ways):
        if support.dim() == 4:
            return self.predict(support[None], support_labels[None], query[None], ways)[0]
        out = []
        for t in range(support.shape[0]):
            with torch.enable_grad():
                params = self.adapt(support[t], support_labels[t], self.inner_steps_eval, first_order=True)
            out.append(call(self.model, {k: v.detach() for k, v in params.items()}, query[t]).detach())
        return torch.stack(out)
