"""Training steps whose gradient computation is replayed as a CUDA graph (`hardware.cuda_graph=true`).

Why: a MAML meta-step on Omniglot-sized tasks is thousands of small kernels, so on a GPU it is
bound by their launches, not by arithmetic. Replaying the captured step launches them all at
once. Measured by scripts/bench_gpu.py on an H100 (2026-11-23, the whole meta-step captured):
vmap MAML 989 -> 8,796 tasks/s with 1 query per class, 993 -> 3,823 with 15.

What is captured is only the gradient: zeroing, the method's loss (``Method.graph_loss``) and its
backward pass. The optimiser step, the schedule, the finiteness check and the checkpoints stay
eager, so a graphed run checkpoints, resumes and diverges exactly like an eager one. The warm-up
rounds before the capture (which CUDA graphs need) change no weight, and the batch-norm statistics
they update are put back.

A replay reads its inputs from fixed buffers, so every batch is copied into them first; a batch
of another shape (never, with a fixed task spec) runs eagerly.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable

import torch

from metalearn.errors import MetalearnError
from metalearn.methods.base import Method
from metalearn.tasks.episodes import EpisodeBatch

log = logging.getLogger("metalearn")

WARMUP_ROUNDS = 3  # eager rounds on a side stream before the capture (cuDNN/cuBLAS workspaces, autograd state)


class Replay:
    """A captured callable and its replay. Tests on a machine without CUDA substitute EagerReplay."""

    def __init__(self, fn: Callable[[], tuple[torch.Tensor, torch.Tensor]]):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_ROUNDS):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn()

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.graph.replay()
        return self.outputs


class EagerReplay:
    """Runs fn() on every call: the same buffers and call order as Replay without CUDA, so the
    bookkeeping around a capture can be tested on the CPU (what it cannot test is the capture)."""

    def __init__(self, fn: Callable[[], tuple[torch.Tensor, torch.Tensor]]):
        self.fn = fn
        for _ in range(WARMUP_ROUNDS):
            fn()

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fn()


def check_cuda_graph(enabled: bool, device: torch.device) -> None:
    if enabled and device.type != "cuda":
        raise MetalearnError(f"hardware.cuda_graph=true needs a CUDA device, but hardware.device is {device}; "
                             f"use hardware=cuda hardware.cuda_graph=true, or leave cuda_graph off on the CPU.")


class GraphedSteps:
    """train_step with the gradient replayed from a capture; `step` returns None where the method's
    step cannot be captured, and the caller then runs the method's own train_step."""

    def __init__(self, method: Method, optimizer: torch.optim.Optimizer,
                 amp: Callable[[], contextlib.AbstractContextManager], replay: type = Replay):
        self.method, self.optimizer, self.amp, self.replay_type = method, optimizer, amp, replay
        self.params = [p for p in method.parameters() if p.requires_grad]
        self.replay: Replay | EagerReplay | None = None
        self.static: EpisodeBatch | None = None
        self.grads: list[torch.Tensor | None] = []
        self.unsupported = False

    def _shapes(self, batch: EpisodeBatch) -> tuple:
        return (batch.support.shape, batch.support_labels.shape, batch.query.shape, batch.query_labels.shape, batch.ways)

    def _gradient(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The captured work: zero the gradients in place, the loss at the static batch, its backward pass
        (which accumulates into the existing gradients in place, so every replay writes the same tensors).
        A parameter the first warm-up round gives no gradient keeps none, as in an eager step."""
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()
        with self.amp():
            loss, accuracy = self.method.graph_loss(self.static)
        loss.backward()
        return loss.detach(), accuracy.detach()

    def _capture(self, batch: EpisodeBatch) -> bool:
        if not self.method.graph_supported(batch):
            self.unsupported = True
            log.info("%s: this step cannot be captured as a CUDA graph; it runs eagerly", self.method.name)
            return False
        self.static = EpisodeBatch(batch.support.clone(), batch.support_labels.clone(), batch.query.clone(),
                                   batch.query_labels.clone(), batch.ways)
        for p in self.params:
            p.grad = None
        buffers = {n: b.clone() for n, b in self.method.named_buffers()}
        self.replay = self.replay_type(self._gradient)
        for n, b in self.method.named_buffers():  # undo the warm-up rounds' batch-norm statistics updates
            b.copy_(buffers[n])
        self.grads = [p.grad for p in self.params]  # the graph writes these tensors on every replay
        log.info("%s: the gradient computation is captured as a CUDA graph", self.method.name)
        return True

    def step(self, batch: EpisodeBatch) -> dict[str, float] | None:
        if self.unsupported:
            return None
        if self.replay is None:
            if not self._capture(batch):
                return None
        elif self._shapes(batch) != self._shapes(self.static):
            return None
        for static, x in zip((self.static.support, self.static.support_labels, self.static.query,
                              self.static.query_labels), (batch.support, batch.support_labels, batch.query,
                                                          batch.query_labels), strict=True):
            static.copy_(x)
        for p, g in zip(self.params, self.grads, strict=True):
            p.grad = g  # the tensors the replay writes; an eager step in between may have replaced them
        loss, accuracy = self.replay()
        value = float(loss)
        if math.isfinite(value):
            self.optimizer.step()
        self.method.after_step()
        return {"loss": value, "accuracy": float(accuracy)}
