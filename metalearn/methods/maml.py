"""MAML (Finn et al. 2017) and the methods that differ from it by a switch:

- ``fomaml``: first-order MAML, the inner gradient treated as a constant;
- ``anil`` (Raghu et al. 2020): the inner loop adapts the head only;
- ``metasgd`` (Li et al. 2017): a learned learning rate for every parameter entry;
- the MAML++ options (Antoniou et al. 2019), see ``MAMLPlusPlus``.

The outer step is the engine's optimiser (Adam by default) on the query loss at the adapted
weights, averaged over the meta-batch.
"""

from __future__ import annotations

import copy
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from metalearn.backbones import vmap_safe
from metalearn.errors import MetalearnError
from metalearn.hardware import release_freed_memory, synchronize
from metalearn.methods.base import Method, accuracy, fp32, one_or_many_tasks
from metalearn.methods.inner_loop import Params, adapt, call
from metalearn.tasks.episodes import EpisodeBatch, TaskSpec

log = logging.getLogger("metalearn")

# How the tasks of a meta-batch run: one by one; all at once under torch.func.vmap; or split, the
# support side (inner loop) under vmap and the query side one by one. `auto` picks by timing.
BATCHING = ("loop", "vmap", "split")
TIMED_ROUNDS = 2  # auto's timed rounds per path, after one warm-up round


@dataclass
class MAMLPlusPlus:
    """MAML++ switches; all off gives plain MAML."""

    per_layer_per_step_lr: bool = False  # LSLR: a learned inner learning rate per layer and per step
    multi_step_loss: bool = False  # MSL: query loss after every inner step, weights annealed to the last
    msl_anneal_steps: int = 1000  # meta-steps over which MSL's weights move to the final step (then MSL stops)
    per_step_bn: bool = False  # BNWB + BNRS: batch-norm weights, biases and statistics per inner step
    first_order_until: int = 0  # derivative-order annealing: first order for this many meta-steps


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys may not contain dots


class MAML(Method):
    adapts_at_test = True

    def __init__(self, backbone: nn.Module, feature_dim: int, ways: int, inner_lr: float, inner_steps: int,
                 inner_steps_eval: int, first_order: bool = False, adapt_head_only: bool = False,
                 learn_inner_lr: bool = False, name: str = "maml", plus: MAMLPlusPlus | None = None,
                 task_batching: str = "auto"):
        super().__init__()
        self.name, self.plus = name, plus or MAMLPlusPlus()
        self.task_batching = task_batching  # loop | vmap | split | auto (timed on the first meta-batch)
        self.query_threads: int | None = None  # split path on the CPU: query-side threads (None: torch's thread count)
        self._replicas: list[nn.Module] = []  # the model's structure for each query thread (weights are passed in)
        self.register_buffer("batching_path", torch.tensor(-1))  # the path auto chose: -1 not yet, else BATCHING[i]
        self.register_load_state_dict_pre_hook(_older_batching_buffer)  # checkpoints from older versions
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
        self.inner_lrs = nn.ParameterDict({_key(n): nn.Parameter(torch.full_like(p, inner_lr))
                                           for n, p in shapes.items()}) if learn_inner_lr else None
        self.step_lrs = nn.ParameterDict({_key(n): nn.Parameter(torch.full((max_steps,), inner_lr)) for n in shapes}
                                         ) if self.plus.per_layer_per_step_lr and not learn_inner_lr else None
        self.step_bn = _PerStepBatchNorm(self.model, self.bn_layers, max_steps + 1) if self.plus.per_step_bn else None
        self.tabled_steps = max_steps  # the per-step tables' length (fixed here, whatever inner_steps_eval becomes)

    # ------------------------------------------------------------ pieces of the inner loop
    def _lr(self, name: str, step: int) -> torch.Tensor | float:
        if self.inner_lrs is not None:
            return self.inner_lrs[_key(name)]
        if self.step_lrs is not None:
            return self.step_lrs[_key(name)][step]
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

    def check_task(self, spec: TaskSpec) -> None:
        if spec.ways != self.ways:
            raise MetalearnError(f"{self.name}'s classifier head has {self.ways} outputs (sampler.train_ways), so it can "
                                 f"only be evaluated {self.ways}-way, not {spec.ways}-way; train with "
                                 f"sampler.train_ways={spec.ways} for that.")

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

    def _adapt_fn(self):
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
        params, adapted = dict(self.model.named_parameters()), self._adapt_fn()

        def task(p: Params, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, yq: torch.Tensor):
            logits = call(self.model, adapted(p, xs, ys), xq)
            return nn.functional.cross_entropy(fp32(logits), yq), logits

        with vmap_safe(self.model):
            return torch.func.vmap(task, in_dims=(None, 0, 0, 0, 0))(params, batch.support, batch.support_labels,
                                                                     batch.query, batch.query_labels)

    def _split_meta_gradient(self, batch: EpisodeBatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The support side of every task at once, the query side task by task. Why: the inner loop and
        its second derivatives work on a few support images per task, too little to keep the cores busy
        one task at a time (measured: a third of the loop path's time with 15 queries per class), while
        the query pass, batched, becomes a grouped convolution slower than the tasks' own. So the
        adapted weights of all tasks come from one vmap; each task's query loss is differentiated with
        respect to its adapted weights alone (one query graph alive per worker, see `_query_workers`);
        then one backward pass carries those gradients through the batched inner loop to the
        meta-parameters."""
        params = dict(self.model.named_parameters())
        with vmap_safe(self.model):
            adapted = torch.func.vmap(self._adapt_fn(), in_dims=(None, 0, 0))(params, batch.support,
                                                                               batch.support_labels)
        adapted = {n: adapted[n] for n in self.adapted}
        outer = {n: torch.zeros_like(v) for n, v in adapted.items()}  # d(query loss) / d(adapted weights)
        fixed = {**dict(self.model.named_buffers()), **params}
        body = [n for n, p in params.items() if n not in adapted and p.requires_grad]  # ANIL's body

        def query_side(model: nn.Module, tasks: range) -> tuple[list[tuple[int, torch.Tensor, torch.Tensor]],
                                                                 list[torch.Tensor | None]]:
            """Query loss, accuracy and d(loss)/d(adapted weights) of `tasks`; the body's gradient summed."""
            done, body_grad = [], [None] * len(body)
            for t in tasks:
                leaves = {n: v[t].detach().requires_grad_() for n, v in adapted.items()}
                logits = call(model, {**fixed, **leaves}, batch.query[t])
                loss = nn.functional.cross_entropy(fp32(logits), batch.query_labels[t])
                if torch.isfinite(loss):
                    grads = torch.autograd.grad(loss / batch.tasks, [*leaves.values(), *(params[n] for n in body)],
                                                allow_unused=True)
                    for n, g in zip(leaves, grads[:len(leaves)], strict=True):
                        outer[n][t] = g
                    body_grad = [a if g is None else g if a is None else a + g
                                 for a, g in zip(body_grad, grads[len(leaves):], strict=True)]
                done.append((t, loss.detach(), accuracy(logits, batch.query_labels[t])))
            return done, body_grad

        workers = self._query_workers(batch)
        if workers == 1:
            parts = [query_side(self.model, range(batch.tasks))]
        else:
            while len(self._replicas) < workers:  # functional_call swaps a module's attributes: one module per thread
                self._replicas.append(copy.deepcopy(self.model))
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # the workers take the cores, one each
            try:
                with ThreadPoolExecutor(workers) as pool:
                    parts = list(pool.map(query_side, self._replicas[:workers],
                                          [range(w, batch.tasks, workers) for w in range(workers)]))
            finally:
                torch.set_num_threads(threads)
        for n, *grads in zip(body, *(g for _, g in parts), strict=True):  # summed in worker order: the same sum every run
            for g in grads:
                if g is not None:
                    params[n].grad = g if params[n].grad is None else params[n].grad + g
        done = sorted((d for part, _ in parts for d in part), key=lambda d: d[0])
        torch.autograd.backward(list(adapted.values()), list(outer.values()))
        return torch.stack([loss for _, loss, _ in done]).mean(), [acc for _, _, acc in done]

    def _query_workers(self, batch: EpisodeBatch) -> int:
        """Threads for the split path's query side. Why threads: on the CPU one task's query pass is too
        small to keep the cores busy with intra-op parallelism; a task per core is not (measured on 2
        cores: +14% tasks/s with 15 queries per class, +16% with 1). The GPU, and autocast (whose state
        is per thread), keep one."""
        if batch.support.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
            return 1
        return max(1, min(self.query_threads or torch.get_num_threads(), batch.tasks))

    def _choose_batching(self, batch: EpisodeBatch) -> str:
        """The path for the meta-batch: as configured, or (auto) whichever of loop, vmap and split ran this
        meta-batch fastest, measured once and kept in a buffer so a resumed run takes the same path."""
        if self.task_batching == "loop" or not self.vmap_supported():
            return "loop"
        if self.task_batching != "auto":
            return self.task_batching
        if int(self.batching_path) < 0:
            times = self._time_paths(batch)
            self.batching_path.fill_(BATCHING.index(min(times, key=times.get)))
            release_freed_memory(batch.support.device)  # the trial's vmap peak, kept otherwise for the whole run
            log.info("%s: tasks of the meta-batch run %s (s per meta-batch, best of %d: %s)", self.name,
                     BATCHING[int(self.batching_path)], TIMED_ROUNDS,
                     ", ".join(f"{p} {t:.2f}" for p, t in times.items()))
        return BATCHING[int(self.batching_path)]

    def _time_paths(self, batch: EpisodeBatch) -> dict[str, float]:
        """Seconds per meta-batch of each path: the fastest of TIMED_ROUNDS interleaved rounds after a
        warm-up round. Why the minimum over rounds: noise only ever adds time, and one timing per path
        chose the loop on the fomaml preset (loop 0.69 s, split 0.75 s) where split ran 0.57 s per step
        in steady state against the loop's 0.72. Interleaving spreads a slow spell over all paths."""
        times = dict.fromkeys(BATCHING, float("inf"))
        for timed in [False] + [True] * TIMED_ROUNDS:
            for path in BATCHING:
                synchronize(batch.support.device)  # CUDA runs asynchronously: time the work, not its launch
                start = time.perf_counter()
                self._meta_gradient(batch, path)
                synchronize(batch.support.device)
                if timed:
                    times[path] = min(times[path], time.perf_counter() - start)
                for p in self.parameters():  # each path starts from no gradient, as a training step does
                    p.grad = None
        return times

    def _meta_gradient(self, batch: EpisodeBatch, path: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Accumulate the meta-gradient of the mean query loss; returns the mean loss and per-task accuracies."""
        if path == "split":
            return self._split_meta_gradient(batch)
        if path == "vmap":
            losses, logits = self.batched_task_losses(batch)
            loss = losses.mean()
            if torch.isfinite(loss):
                loss.backward()
            return loss.detach(), list(accuracy(logits, batch.query_labels, 1))
        losses, accs = [], []
        for t in range(batch.tasks):
            loss, logits = self.task_loss(batch, t)
            if torch.isfinite(loss):
                (loss / batch.tasks).backward()
            losses.append(loss.detach())
            accs.append(accuracy(logits, batch.query_labels[t]))
        return torch.stack(losses).mean(), accs

    def train_step(self, batch: EpisodeBatch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """One outer step for the meta-batch: tasks one by one (one graph alive at a time) or under vmap."""
        path = self._choose_batching(batch)
        optimizer.zero_grad(set_to_none=True)
        loss, accs = self._meta_gradient(batch, path)
        if torch.isfinite(loss):
            optimizer.step()
        self.after_step()
        return {"loss": float(loss), "accuracy": float(torch.stack(accs).mean())}

    def after_step(self) -> None:
        self.meta_steps += 1

    def graph_supported(self, batch: EpisodeBatch) -> bool:
        """The vmap path, when it may be taken (task_batching auto or vmap), is capturable: on a GPU it
        is the fastest path by an order of magnitude once captured (README, On a GPU), so auto takes it
        without timing. MAML++'s derivative-order annealing reads the step counter and stays eager."""
        if self.task_batching not in ("auto", "vmap") or not self.vmap_supported() or self.plus.first_order_until > 0:
            return False
        if self.task_batching == "auto":
            self.batching_path.fill_(BATCHING.index("vmap"))
        return True

    def graph_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        losses, logits = self.batched_task_losses(batch)
        return losses.mean(), accuracy(logits, batch.query_labels)

    # ------------------------------------------------------------ test time
    def adapt_for_test(self, support: torch.Tensor, labels: torch.Tensor) -> Params:
        """The weights adapted to one task's support set at test time (no second-order graph needed)."""
        return self.adapt(support, labels, self.inner_steps_eval, first_order=True)[-1]

    @one_or_many_tasks
    def predict(self, support, support_labels, query, ways):
        out = []
        for t in range(support.shape[0]):
            with torch.enable_grad():
                params = self.adapt_for_test(support[t], support_labels[t])
            out.append(self._forward({k: v.detach() for k, v in params.items()}, query[t], self.inner_steps_eval).detach())
        return torch.stack(out)


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
                self.affine[f"{_key(b)}__w{k}"] = nn.Parameter(bn.weight.detach().clone())
                self.affine[f"{_key(b)}__b{k}"] = nn.Parameter(bn.bias.detach().clone())
                if bn.track_running_stats:
                    self.register_buffer(f"{_key(b)}__m{k}", bn.running_mean.detach().clone())
                    self.register_buffer(f"{_key(b)}__v{k}", bn.running_var.detach().clone())

    def at(self, step: int) -> Params:
        """The tensors to swap into the model for inner step `step` (statistics are updated in place)."""
        k = min(step, self.steps - 1)
        out = {}
        for b in self.layers:
            out[f"{b}.weight"] = self.affine[f"{_key(b)}__w{k}"]
            out[f"{b}.bias"] = self.affine[f"{_key(b)}__b{k}"]
            if hasattr(self, f"{_key(b)}__m{k}"):
                out[f"{b}.running_mean"] = getattr(self, f"{_key(b)}__m{k}")
                out[f"{b}.running_var"] = getattr(self, f"{_key(b)}__v{k}")
        return out
