"""Which statistics the batch-norm layers of an embedding method normalise with at test time.

Training always normalises with the training batch's statistics (and tracks running ones). At test
time (``method.batch_norm``):

- ``running``: the statistics tracked over training (PyTorch's eval mode). Every image is encoded
  on its own, but new classes whose images differ from the training ones (another alphabet's
  strokes) are normalised with the wrong statistics.
- ``support``: each task's support set's own statistics, for the support images and the queries
  alike (MetaBN in Bronskill et al. 2020, "TaskNorm"). A query is still classified from the
  support set and itself alone, so this is not transductive: its prediction does not depend on
  the other queries.
- ``transductive``: the statistics of the task's support and all its queries together (the
  reference MAML code's policy); a query's prediction then depends on the other queries.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

BN_POLICIES = ("running", "support", "transductive")


def batch_norm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class TaskStatistics:
    """Forward hooks that make every batch-norm layer of a module normalise with statistics of a
    batch it saw, in place of its running ones. Modes: ``record`` (normalise with this batch's
    statistics and keep them), ``reuse`` (normalise with the kept ones), ``off`` (the layer as is)."""

    def __init__(self, module: nn.Module):
        self.layers = batch_norm_layers(module)
        self.mode = "off"
        self.stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def __enter__(self) -> TaskStatistics:
        self.handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.stats.clear()

    def _hook(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        if self.mode == "off":
            return None
        x = inputs[0]
        if self.mode == "record":
            dims = [d for d in range(x.dim()) if d != 1]  # every axis but the channels
            xf = x.float()
            self.stats[layer] = (xf.mean(dims), xf.var(dims, unbiased=False))
        mean, var = self.stats[layer]
        y = nn.functional.batch_norm(x.float(), mean, var, layer.weight, layer.bias, False, 0.0, layer.eps)
        return y.to(output.dtype)


def embed_with_task_statistics(encode: Callable[[torch.Tensor], torch.Tensor], module: nn.Module, policy: str,
                               support: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Support [T, S, ...] and query [T, Q, ...] -> codes [T, S, D], [T, Q, D], task by task, each task's
    batch-norm statistics taken from its support set (``support``) or its support and queries together
    (``transductive``). Why task by task: one pass over all tasks with per-task statistics gives up
    batch norm's fused kernel and measured 2x slower (200 Siamese episodes on 1 thread: 40-47 s vs 19-23 s)."""
    zs, zq = [], []
    s = support.shape[1]
    with TaskStatistics(module) as stats:
        for t in range(support.shape[0]):
            stats.mode = "record"
            if policy == "support":
                zs.append(encode(support[t]))
                stats.mode = "reuse"
                zq.append(encode(query[t]))
            else:
                z = encode(torch.cat([support[t], query[t]]))
                zs.append(z[:s])
                zq.append(z[s:])
            stats.mode = "off"
    return torch.stack(zs), torch.stack(zq)
