"""MAML (Finn et al. 2017) and the methods that differ from it by a switch:

- ``fomaml``: first-order MAML, the inner gradient treated as a constant;
- ``anil`` (Raghu et al. 2020): the inner loop adapts the head only;
- ``metasgd`` (Li et al. 2017): a learned learning rate for every parameter entry;
- the MAML++ options (Antoniou et al. 2019), declared once in the torch-free schema ``metalearn.config.MAMLPlusPlusConfig``.

The outer step is the engine's optimiser (Adam by default) on the query loss at the adapted
weights, averaged over the meta-batch.
"""

from __future__ import annotations

import torch
from torch import nn

from metalearn.backbones import vmap_safe
from metalearn.config import MAMLPlusPlusConfig
from metalearn.methods.base import AdaptingMethod, BuildContext, accuracy, fp32, on_load
from metalearn.methods.inner_loop import Params, adapt, call, param_key
from metalearn.methods.task_batching import PATHS, TaskBatching
from metalearn.registry import METHODS
from metalearn.tasks.episodes import EpisodeBatch


class MAML(AdaptingMethod):
    """The algorithm: inner loop, outer loss, first or second order, the MAML++ switches. How the tasks of a
    meta-batch are executed (loop, vmap, split, auto) is `self.batching`, methods/task_batching.py."""

    def __init__(self, backbone: nn.Module, feature_dim: int, ways: int, inner_lr: float, inner_steps: int,
                 inner_steps_eval: int, first_order: bool = False, adapt_head_only: bool = False,
                 learn_inner_lr: bool = False, name: str = "maml", plus: MAMLPlusPlusConfig | None = None,
                 task_batching: str = "auto", task_chunk: int | None = None):
        super().__init__()
        self.name, self.plus = name, plus or MAMLPlusPlusConfig()
        self.batching = TaskBatching(task_batching, task_chunk)  # how a meta-batch's tasks run (loop | vmap | split | auto)
        self.register_buffer("batching_path", torch.tensor(-1))  # the path auto chose: -1 not yet, else PATHS[i]
        on_load(self, _older_batching_buffer)  # checkpoints from older versions
        self.model = nn.Sequential(backbone, nn.Linear(feature_dim, ways))
        self.ways, self.inner_lr, self.first_order = ways, inner_lr, first_order
        self.inner_steps, self.inner_steps_eval = inner_steps, inner_steps_eval
        self.register_buffer("meta_steps", torch.zeros((), dtype=torch.long))  # for the MAML++ schedules
        max_steps = max(inner_steps, inner_steps_eval)
        self.bn_layers = [n for n, m in self.model.named_modules() if isinstance(m, nn.BatchNorm2d)]
        bn_params = {f"{b}.{p}" for b in self.bn_layers for p in ("weight", "bias")}
        self.adapted = [n for n, _ in self.model.named_parameters()
                        if (not adapt_head_only or n.startswith("1.")) and not (self.plus.per_step_bn and n in bn_params)]
        shapes = {n: p for n, p in self.model.named_parameters() if n in self.adapted}
        self.inner_lrs = nn.ParameterDict({param_key(n): nn.Parameter(torch.full_like(p, inner_lr))
                                           for n, p in shapes.items()}) if learn_inner_lr else None
        self.step_lrs = nn.ParameterDict({param_key(n): nn.Parameter(torch.full((max_steps,), inner_lr)) for n in shapes}
                                         ) if self.plus.per_layer_per_step_lr and not learn_inner_lr else None
        self.step_bn = _PerStepBatchNorm(self.model, self.bn_layers, max_steps + 1) if self.plus.per_step_bn else None
        self.tabled_steps = max_steps  # the per-step tables' length (fixed here, whatever inner_steps_eval becomes)

    # ------------------------------------------------------------ pieces of the inner loop
    def _lr(self, name: str, step: int) -> torch.Tensor | float:
        if self.inner_lrs is not None:
            return self.inner_lrs[param_key(name)]
        if self.step_lrs is not None:
            return self.step_lrs[param_key(name)][step]
        return self.inner_lr

    def _forward(self, params: Params, x: torch.Tensor, step: int) -> torch.Tensor:
        if self.step_bn is not None:
            params = {**params, **self.step_bn.at(step)}
        return call(self.model, params, x)

    def _first_order_now(self) -> bool:
        # the buffer is read only when annealing is on: reading a CUDA tensor waits for the device
        return self.first_order or (self.plus.first_order_until > 0 and int(self.meta_steps) < self.plus.first_order_until)

    def msl_weights(self, steps: int) -> torch.Tensor | None:
        """MAML++'s per-step loss weights at the current meta-step, or None once MSL has ended."""
        if not self.plus.multi_step_loss or int(self.meta_steps) >= self.plus.msl_anneal_steps or steps < 2:
            return None
        progress = int(self.meta_steps) / max(1, self.plus.msl_anneal_steps)
        floor = 0.03 / steps
        w = torch.full((steps,), max(1.0 / steps - progress / steps, floor))
        w[-1] = min(1.0 / steps + progress * (steps - 1) / steps, 1.0 - (steps - 1) * floor)
        return w

    def eval_steps_limit(self) -> int | None:
        """The most inner steps a test task may take: MAML++'s per-step learning rates and batch norms exist for
        the steps they were learned for; plain MAML's single rate extends to any number (None)."""
        return self.tabled_steps if self.step_lrs is not None or self.step_bn is not None else None

    def adapt(self, support: torch.Tensor, labels: torch.Tensor, steps: int, first_order: bool) -> list[Params]:
        """The trajectory of weights adapted to one task's support set, one entry per inner step."""
        params = dict(self.model.named_parameters())
        return adapt(self.model, params, support, labels, steps, self._lr, self.adapted, first_order,
                     forward=self._forward if self.step_bn is not None else None)

    # ------------------------------------------------------------ meta-training
    def task_loss(self, batch: EpisodeBatch, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Query loss and logits of task t at the weights adapted on its support set."""
        steps = self.inner_steps
        trajectory = self.adapt(batch.support[t], batch.support_labels[t], steps, self._first_order_now())
        weights = self.msl_weights(steps)
        q, yq = batch.query[t], batch.query_labels[t]
        logits = self._forward(trajectory[-1], q, steps)
        if weights is None:
            return nn.functional.cross_entropy(fp32(logits), yq), logits
        losses = [nn.functional.cross_entropy(fp32(self._forward(p, q, k + 1)), yq) for k, p in enumerate(trajectory[:-1])]
        losses.append(nn.functional.cross_entropy(fp32(logits), yq))
        stacked = torch.stack(losses)
        return (weights.to(stacked) * stacked).sum(), logits

    # ------------------------------------------------------------ the meta-batch, batched
    def vmap_supported(self) -> bool:
        """vmap covers MAML, FOMAML, ANIL, Meta-SGD and LSLR with batch statistics; MSL, per-step batch-norm
        and running statistics (updated in place) run task by task."""
        running = any(getattr(m, "track_running_stats", False) for m in self.model.modules())
        return self.step_bn is None and not running and self.msl_weights(self.inner_steps) is None

    def adapt_fn(self):
        """The inner loop as a pure function (params, support images, labels) -> adapted params, for vmap."""
        names, steps, first_order = self.adapted, self.inner_steps, self._first_order_now()

        def adapted(p: Params, xs: torch.Tensor, ys: torch.Tensor) -> Params:
            for k in range(steps):
                def inner_loss(sub: Params, p: Params = p) -> torch.Tensor:
                    return nn.functional.cross_entropy(fp32(call(self.model, {**p, **sub}, xs)), ys)

                g = torch.func.grad(inner_loss)({n: p[n] for n in names})
                p = {**p, **{n: p[n] - self._lr(n, k) * (g[n].detach() if first_order else g[n]) for n in names}}
            return p

        return adapted

    def batched_task_losses(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Query losses [T] and logits [T, Q, ways] of every task at once: the inner loop written with
        torch.func.grad, mapped over the meta-batch with torch.func.vmap (the convolutions of all tasks
        become one grouped convolution)."""
        params, adapted = dict(self.model.named_parameters()), self.adapt_fn()

        def task(p: Params, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, yq: torch.Tensor):
            logits = call(self.model, adapted(p, xs, ys), xq)
            return nn.functional.cross_entropy(fp32(logits), yq), logits

        with vmap_safe(self.model):
            return torch.func.vmap(task, in_dims=(None, 0, 0, 0, 0), randomness="different")(
                params, batch.support, batch.support_labels, batch.query, batch.query_labels)

    def train_step(self, batch: EpisodeBatch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One outer step for the meta-batch: tasks one by one (one graph alive at a time) or under vmap."""
        path = self.batching.choose(self, batch)
        optimizer.zero_grad(set_to_none=True)
        loss, accs = self.batching.meta_gradient(self, batch, path)
        if torch.isfinite(loss):
            optimizer.step()
        self.after_step()
        return {"loss": float(loss), "accuracy": float(torch.stack(accs).mean())}

    def after_step(self) -> None:
        self.meta_steps += 1

    def graph_supported(self, batch: EpisodeBatch) -> bool:
        """The vmap path, when it may be taken (task_batching auto or vmap), is capturable: on a GPU it
        is the fastest path by an order of magnitude once captured (README, On a GPU), so auto takes it
        without timing. MAML++'s derivative-order annealing reads the step counter and stays eager, and
        a meta-batch run in chunks (method.task_chunk) is not one graph."""
        if self.batching.mode not in ("auto", "vmap") or not self.vmap_supported() or self.plus.first_order_until > 0:
            return False
        if self.batching.chunk_size(batch, "vmap") < batch.tasks:
            return False
        if self.batching.mode == "auto":
            self.batching_path.fill_(PATHS.index("vmap"))
        return True

    def graph_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        losses, logits = self.batched_task_losses(batch)
        return losses.mean(), accuracy(logits, batch.query_labels)

    # ------------------------------------------------------------ test time
    def adapt_for_test(self, support: torch.Tensor, labels: torch.Tensor) -> Params:
        """The weights adapted to one task's support set at test time (no second-order graph needed)."""
        return self.adapt(support, labels, self.inner_steps_eval, first_order=True)[-1]

    def predict_task(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            params = self.adapt_for_test(support, labels)
        return self._forward({k: v.detach() for k, v in params.items()}, query, self.inner_steps_eval).detach()


def _older_batching_buffer(module, state_dict, prefix, *args) -> None:
    """Checkpoints from before the split path named the buffer `uses_vmap` (0 loop, 1 vmap: the same
    indices), and older ones have none (auto then times the paths again)."""
    state_dict.setdefault(prefix + "batching_path", state_dict.pop(prefix + "uses_vmap", torch.tensor(-1)))


class _PerStepBatchNorm(nn.Module):
    """MAML++'s per-step batch-norm: each inner step k has its own weights and biases (BNWB) and,
    when the layers keep running statistics, its own running mean and variance (BNRS)."""

    def __init__(self, model: nn.Module, layers: list[str], steps: int):
        super().__init__()
        self.layers, self.steps = layers, steps
        self.affine = nn.ParameterDict()
        for b in layers:
            bn = model.get_submodule(b)
            for k in range(steps):
                self.affine[f"{param_key(b)}__w{k}"] = nn.Parameter(bn.weight.detach().clone())
                self.affine[f"{param_key(b)}__b{k}"] = nn.Parameter(bn.bias.detach().clone())
                if bn.track_running_stats:
                    self.register_buffer(f"{param_key(b)}__m{k}", bn.running_mean.detach().clone())
                    self.register_buffer(f"{param_key(b)}__v{k}", bn.running_var.detach().clone())

    def at(self, step: int) -> Params:
        """The tensors to swap into the model for inner step `step` (statistics are updated in place)."""
        k = min(step, self.steps - 1)
        out = {}
        for b in self.layers:
            out[f"{b}.weight"] = self.affine[f"{param_key(b)}__w{k}"]
            out[f"{b}.bias"] = self.affine[f"{param_key(b)}__b{k}"]
            if hasattr(self, f"{param_key(b)}__m{k}"):
                out[f"{b}.running_mean"] = getattr(self, f"{param_key(b)}__m{k}")
                out[f"{b}.running_var"] = getattr(self, f"{param_key(b)}__v{k}")
        return out


@METHODS.register("maml", "fomaml", "anil", "metasgd", "mamlpp")
def build(cfg, ctx: BuildContext) -> MAML:
    """One schema for the family: each member is MAML with its switches (configs/method/<name>.yaml)."""
    backbone = ctx.backbone(cfg, bn_running_stats=cfg.batch_norm == "running")
    plus = MAMLPlusPlusConfig(**{k: cfg.plus[k] for k in cfg.plus})
    return MAML(backbone, ctx.feature_dim(backbone), ctx.ways, cfg.inner_lr, cfg.inner_steps, cfg.inner_steps_eval,
                cfg.first_order, cfg.adapt == "head", cfg.learn_inner_lr, name=cfg.name, plus=plus,
                task_batching=cfg.task_batching, task_chunk=cfg.task_chunk)
