"""How the tasks of a MAML meta-batch are executed, apart from what MAML computes (methods/maml.py).

Three paths give the same meta-gradient (tested to 1e-9 in float64):
- `loop`: task by task, one graph alive at a time;
- `vmap`: every task at once under torch.func.vmap (the convolutions of all tasks become one grouped
  convolution);
- `split`: the support side (the inner loop and its second derivatives) of every task at once under
  vmap, the query side task by task, in a thread per core on the CPU.

vmap and split run at most `chunk_size` tasks at once (on the CPU a bound on memory, on a GPU all).
Each path wins somewhere (docs/performance.md), so `auto` times them on the first meta-batch and keeps
the fastest; the method records the choice in a buffer, so a resumed run takes the same path.

The public interface, used by the trainer through MAML and by scripts/bench.py and experiments/auto_choice.py:
`TaskBatching.choose(method, batch)` and `TaskBatching.meta_gradient(method, batch, path)`. What a
method must offer is `BatchableMethod` below.
"""

from __future__ import annotations

import copy
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import torch
from torch import nn

from metalearn.backbones import vmap_safe
from metalearn.hardware import release_freed_memory, synchronize
from metalearn.methods.base import accuracy, fp32
from metalearn.methods.inner_loop import call
from metalearn.tasks.episodes import EpisodeBatch

log = logging.getLogger("metalearn")

PATHS = ("loop", "vmap", "split")
MODES = ("auto", *PATHS)
TIMED_ROUNDS = 2  # auto's timed rounds per path, after one warm-up round
CPU_VMAP_IMAGES = 160  # on the CPU, vmap runs at most this many support and query images at once (chunk_size)
CPU_SPLIT_TASKS = 16  # and split the support side of at most this many tasks


def cpu_autocast() -> bool:
    """Whether autocast is on for the CPU: torch >= 2.4 asks is_autocast_enabled("cpu"); 2.3 has only
    is_autocast_cpu_enabled()."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # pragma: no cover - torch 2.3 (.ci/lowest)
        return torch.is_autocast_cpu_enabled()


class BatchableMethod(Protocol):
    """What a meta-batch strategy needs of the algorithm: its model, which weights the inner loop adapts,
    the inner loop as a pure function, one task's query loss, and every task's at once."""

    name: str
    model: nn.Module
    adapted: list[str]
    batching_path: torch.Tensor  # the path auto chose: -1 not yet, else PATHS[i]

    def vmap_supported(self) -> bool: ...
    def adapt_fn(self): ...
    def task_loss(self, batch: EpisodeBatch, t: int) -> tuple[torch.Tensor, torch.Tensor]: ...
    def batched_task_losses(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]: ...
    def parameters(self): ...


class TaskBatching:
    """A method's choice of path (`mode`: auto or one of PATHS) and the split path's query threads."""

    def __init__(self, mode: str = "auto", task_chunk: int | None = None, query_threads: int | None = None):
        self.mode = mode
        self.task_chunk = task_chunk  # tasks vmap and split run at once (None: see chunk_size)
        self.query_threads = query_threads  # split on the CPU: query-side threads (None: torch's thread count)
        self.replicas: list[nn.Module] = []  # the model's structure for each query thread (weights are passed in)

    def choose(self, method: BatchableMethod, batch: EpisodeBatch) -> str:
        """The path for the meta-batch: as configured, or (auto) whichever of loop, vmap and split ran this
        meta-batch fastest, measured once and kept in the method's buffer."""
        if self.mode == "loop" or not method.vmap_supported():
            return "loop"
        if self.mode != "auto":
            return self.mode
        if int(method.batching_path) < 0:
            times = self.time_paths(method, batch)
            method.batching_path.fill_(PATHS.index(min(times, key=times.get)))
            release_freed_memory(batch.support.device)  # the trial's vmap peak, kept otherwise for the whole run
            log.info("%s: tasks of the meta-batch run %s (s per meta-batch, best of %d: %s)", method.name,
                     PATHS[int(method.batching_path)], TIMED_ROUNDS,
                     ", ".join(f"{p} {t:.2f}" for p, t in times.items()))
        return PATHS[int(method.batching_path)]

    def time_paths(self, method: BatchableMethod, batch: EpisodeBatch) -> dict[str, float]:
        """Seconds per meta-batch of each path: the fastest of TIMED_ROUNDS interleaved rounds after a
        warm-up round. Why the minimum over rounds: noise only ever adds time, and one timing per path
        chose the loop on the fomaml preset (loop 0.69 s, split 0.75 s) where split ran 0.57 s per step
        in steady state against the loop's 0.72. Interleaving spreads a slow spell over all paths."""
        times = dict.fromkeys(PATHS, float("inf"))
        for timed in [False] + [True] * TIMED_ROUNDS:
            for path in PATHS:
                synchronize(batch.support.device)  # CUDA runs asynchronously: time the work, not its launch
                start = time.perf_counter()
                self.meta_gradient(method, batch, path)
                synchronize(batch.support.device)
                if timed:
                    times[path] = min(times[path], time.perf_counter() - start)
                for p in method.parameters():  # each path starts from no gradient, as a training step does
                    p.grad = None
        return times

    def chunk_size(self, batch: EpisodeBatch, path: str) -> int:
        """Tasks the vmap or split path runs at once: method.task_chunk, or on the CPU a bound on memory.
        Why these bounds (the bench workload: Conv-4, 32 tasks, 2 cores; docs/performance.md): memory grows
        with the tasks run at once, tasks/s barely does past a few (vmap at 1 query: 983 MB peak at 32 tasks,
        841 at 16, 788 at 8, tasks/s within the noise). vmap holds every image of its tasks (at 15 queries:
        2,280 MB at 32 tasks), so at most CPU_VMAP_IMAGES support and query images; split only its support
        side, so at most CPU_SPLIT_TASKS tasks (at 15 queries: 877 MB at 16 tasks, 999 at 32, 95% of the
        tasks/s). On a GPU the whole meta-batch: width is what makes it fast there."""
        if self.task_chunk:
            return min(self.task_chunk, batch.tasks)
        if batch.support.device.type != "cpu":
            return batch.tasks
        if path == "split":
            return min(CPU_SPLIT_TASKS, batch.tasks)
        images = batch.support.shape[1] + batch.query.shape[1]
        return max(1, min(CPU_VMAP_IMAGES // images, batch.tasks))

    def meta_gradient(self, method: BatchableMethod, batch: EpisodeBatch,
                      path: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Accumulate the meta-gradient of the mean query loss; returns the mean loss and per-task accuracies.
        vmap and split run the meta-batch in chunks of `chunk_size` tasks, each chunk's loss summed over
        the whole meta-batch's task count, so the chunks' gradients add up to the mean's."""
        if path == "loop":
            return self.loop(method, batch)
        losses, accs = [], []
        for part in batch.chunks(self.chunk_size(batch, path)):
            part_losses, part_accs = (self.split if path == "split" else self.vmap)(method, part, batch.tasks)
            losses.append(part_losses)
            accs += part_accs
        return torch.cat(losses).mean(), accs

    @staticmethod
    def loop(method: BatchableMethod, batch: EpisodeBatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Task by task, one graph alive at a time."""
        losses, accs = [], []
        for t in range(batch.tasks):
            loss, logits = method.task_loss(batch, t)
            if torch.isfinite(loss):
                (loss / batch.tasks).backward()
            losses.append(loss.detach())
            accs.append(accuracy(logits, batch.query_labels[t]))
        return torch.stack(losses).mean(), accs

    @staticmethod
    def vmap(method: BatchableMethod, batch: EpisodeBatch, total: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Every task of `batch` at once; the gradient of their losses' sum over `total` tasks. Returns the
        per-task losses and accuracies."""
        losses, logits = method.batched_task_losses(batch)
        loss = losses.sum() / total
        if torch.isfinite(loss):
            loss.backward()
        return losses.detach(), list(accuracy(logits, batch.query_labels, 1))

    def split(self, method: BatchableMethod, batch: EpisodeBatch,
              total: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The support side of every task of `batch` at once, the query side task by task; the gradient of
        their losses' sum over `total` tasks. Returns the per-task losses and accuracies. Why: the inner loop and
        its second derivatives work on a few support images per task, too little to keep the cores busy
        one task at a time (measured: a third of the loop path's time with 15 queries per class), while
        the query pass, batched, becomes a grouped convolution slower than the tasks' own. So the
        adapted weights of all tasks come from one vmap; each task's query loss is differentiated with
        respect to its adapted weights alone (one query graph alive per worker, see `query_workers`);
        then one backward pass carries those gradients through the batched inner loop to the
        meta-parameters."""
        model = method.model
        params = dict(model.named_parameters())
        with vmap_safe(model):
            adapted = torch.func.vmap(method.adapt_fn(), in_dims=(None, 0, 0), randomness="different")(
                params, batch.support, batch.support_labels)
        adapted = {n: adapted[n] for n in method.adapted}
        outer = {n: torch.zeros_like(v) for n, v in adapted.items()}  # d(query loss) / d(adapted weights)
        fixed = {**dict(model.named_buffers()), **params}
        body = [n for n, p in params.items() if n not in adapted and p.requires_grad]  # ANIL's body

        def query_side(replica: nn.Module, tasks: range) -> tuple[list[tuple[int, torch.Tensor, torch.Tensor]],
                                                                   list[torch.Tensor | None]]:
            """Query loss, accuracy and d(loss)/d(adapted weights) of `tasks`; the body's gradient summed."""
            done, body_grad = [], [None] * len(body)
            for t in tasks:
                leaves = {n: v[t].detach().requires_grad_() for n, v in adapted.items()}
                logits = call(replica, {**fixed, **leaves}, batch.query[t])
                loss = nn.functional.cross_entropy(fp32(logits), batch.query_labels[t])
                if torch.isfinite(loss):
                    grads = torch.autograd.grad(loss / total, [*leaves.values(), *(params[n] for n in body)],
                                                allow_unused=True)
                    for n, g in zip(leaves, grads[:len(leaves)], strict=True):
                        outer[n][t] = g
                    body_grad = [a if g is None else g if a is None else a + g
                                 for a, g in zip(body_grad, grads[len(leaves):], strict=True)]
                done.append((t, loss.detach(), accuracy(logits, batch.query_labels[t])))
            return done, body_grad

        workers = self.query_workers(batch)
        if workers == 1:
            parts = [query_side(model, range(batch.tasks))]
        else:
            while len(self.replicas) < workers:  # functional_call swaps a module's attributes: one module per thread
                self.replicas.append(copy.deepcopy(model))
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # the workers take the cores, one each
            try:
                with ThreadPoolExecutor(workers) as pool:
                    parts = list(pool.map(query_side, self.replicas[:workers],
                                          [range(w, batch.tasks, workers) for w in range(workers)]))
            finally:
                torch.set_num_threads(threads)
        for n, *grads in zip(body, *(g for _, g in parts), strict=True):  # summed in worker order: the same sum every run
            for g in grads:
                if g is not None:
                    params[n].grad = g if params[n].grad is None else params[n].grad + g
        done = sorted((d for part, _ in parts for d in part), key=lambda d: d[0])
        torch.autograd.backward(list(adapted.values()), list(outer.values()))
        return torch.stack([loss for _, loss, _ in done]), [acc for _, _, acc in done]

    def query_workers(self, batch: EpisodeBatch) -> int:
        """Threads for the split path's query side. Why threads: on the CPU one task's query pass is too
        small to keep the cores busy with intra-op parallelism; a task per core is not (measured on 2
        cores: +14% tasks/s with 15 queries per class, +16% with 1). The GPU, and autocast (whose state
        is per thread), keep one."""
        if batch.support.device.type != "cpu" or cpu_autocast():
            return 1
        return max(1, min(self.query_threads or torch.get_num_threads(), batch.tasks))
