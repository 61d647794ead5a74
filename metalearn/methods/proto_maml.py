"""Proto-MAML (Triantafillou et al., ICLR 2020, "Meta-Dataset", §4; the authors' code: meta_dataset/learners/
optimization_learners.py, proto_maml_fc_layer_init_fn).

MAML's output layer has a fixed number of classes; Proto-MAML's is built for each task from its support set as
the ProtoNet classifier it equals: with c_k the mean embedding of class k, -|x - c_k|^2 = 2 c_k.x - |c_k|^2 -
|x|^2, so W_k = 2 c_k and b_k = -|c_k|^2 (the |x|^2 term is the same for every class). Then the backbone and
this head take `inner_steps` gradient steps on the support loss, and the query loss at the adapted weights is
the outer loss. The head is a function of the backbone's weights, so the outer gradient reaches them through
the initialisation as well as through the adapted network (the paper lets it: "ProtoNet-equivalent
initialisation"). Any number of ways and shots per class: the variable episodes of Meta-Dataset.
"""

from __future__ import annotations

import torch
from torch import nn

from metalearn.methods.base import AdaptingMethod, BuildContext, accuracy, class_centroids, fp32
from metalearn.methods.inner_loop import Params, call
from metalearn.registry import METHODS
from metalearn.tasks.episodes import EpisodeBatch, TaskSpec

HEAD = ("head.weight", "head.bias")


class ProtoMAML(AdaptingMethod):
    def __init__(self, backbone: nn.Module, inner_lr: float, inner_steps: int, inner_steps_eval: int,
                 first_order: bool = True):
        super().__init__()
        self.name = "proto_maml"
        self.backbone = backbone
        self.inner_lr, self.inner_steps, self.inner_steps_eval, self.first_order = (inner_lr, inner_steps,
                                                                                    inner_steps_eval, first_order)
        self.ways = 0  # any: the head is built per task

    def check_task(self, spec: TaskSpec) -> None:
        """Any way count: the head is the task's own."""

    def prototype_head(self, params: Params, support: torch.Tensor, labels: torch.Tensor, ways: int) -> Params:
        """W = 2 c, b = -|c|^2 from the support set's class means under `params`."""
        z = fp32(call(self.backbone, params, support))
        c = class_centroids(z[None], labels[None], ways)[0]  # [ways, D]
        return {"head.weight": 2 * c, "head.bias": -(c * c).sum(-1)}

    def _logits(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        body = {k: v for k, v in params.items() if k not in HEAD}
        return nn.functional.linear(fp32(call(self.backbone, body, x)), params["head.weight"], params["head.bias"])

    def adapted(self, support: torch.Tensor, labels: torch.Tensor, ways: int, steps: int, first_order: bool) -> Params:
        """The backbone's and the prototype head's weights after `steps` gradient steps on the support loss. Each
        step's gradient is the partial derivative in each weight, the head's included (torch.func.grad: the head
        is a weight of its own in the inner loop, as the authors' assigned variables are, not a function of the
        backbone); first order detaches it (FOMAML). The graph from the weights and the head's prototypes to the
        adapted weights stays for the outer loss."""
        params = dict(self.backbone.named_parameters())
        params |= self.prototype_head(params, support, labels, ways)

        def inner_loss(p: Params) -> torch.Tensor:
            return nn.functional.cross_entropy(self._logits(p, support), labels)

        for _ in range(steps):
            grads = torch.func.grad(inner_loss)(params)
            params = {n: v - self.inner_lr * (grads[n].detach() if first_order else grads[n]) for n, v in params.items()}
        return params

    def task_loss(self, batch: EpisodeBatch, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.adapted(batch.support[t], batch.support_labels[t], batch.ways, self.inner_steps, self.first_order)
        logits = self._logits(params, batch.query[t])
        return nn.functional.cross_entropy(logits, batch.query_labels[t]), logits

    def train_step(self, batch: EpisodeBatch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """The meta-batch's tasks one by one (each task's graph freed after its backward), gradients averaged."""
        optimizer.zero_grad(set_to_none=True)
        losses, accs = [], []
        for t in range(batch.tasks):
            loss, logits = self.task_loss(batch, t)
            (loss / batch.tasks).backward()
            losses.append(float(loss.detach()))
            accs.append(float(accuracy(logits, batch.query_labels[t])))
        total = sum(losses) / len(losses)
        if torch.isfinite(torch.tensor(total)):
            optimizer.step()
        return {"loss": total, "accuracy": sum(accs) / len(accs)}

    def predict_task(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        ways = int(labels.max()) + 1
        with torch.enable_grad():
            params = self.adapted(support, labels, ways, self.inner_steps_eval, first_order=True)
        return self._logits({k: v.detach() for k, v in params.items()}, query).detach()


@METHODS.register("proto_maml")
def build(cfg, ctx: BuildContext) -> ProtoMAML:
    backbone = ctx.backbone(cfg, bn_running_stats=cfg.batch_norm == "running")
    return ProtoMAML(backbone, cfg.inner_lr, cfg.inner_steps, cfg.inner_steps_eval, cfg.first_order)
