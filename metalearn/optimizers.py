"""torch.optim's Adam, AdamW and SGD, without the one-off import of torch._dynamo.

torch wraps five `Optimizer` methods (`add_param_group`, `zero_grad`, `state_dict`,
`load_state_dict` and every `step`) in hooks that exist for `torch.compile`: each imports
`torch._dynamo` on its first call, to mark the method as not compiled or to insert a graph
break. In eager mode those hooks do nothing else, yet the import costs 1.1 to 1.6 s per
process here, as long as `import torch` itself, which made a smoke run's start-up twice
torch's (issue 36; docs/performance.md, "Start-up and smoke runs").

metalearn never compiles an optimiser step, so these subclasses call torch's own undecorated
methods (the decorators keep them as `__wrapped__`, through `functools.wraps`). The update
arithmetic, the state and the `state_dict` format are torch's, unchanged:
`tests/test_optimizers.py` checks equal parameters and states against `torch.optim` step by
step, and that no step imports `torch._dynamo`. Under a torch whose methods carry no
`__wrapped__`, each falls back to the decorated method: slower to start, equally correct.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer


def _undecorated(method: Callable[..., Any]) -> Callable[..., Any]:
    return getattr(method, "__wrapped__", method)


def _eager_step(step: Callable[..., Any]) -> Callable[..., Any]:
    """`step` without its dynamo hook, keeping what the hook does in eager mode: gradients off
    unless the optimiser was built `differentiable`."""
    inner = _undecorated(step)
    if inner is step:
        return step

    @functools.wraps(inner)
    def step_without_dynamo(self: Optimizer, closure: Callable[[], Any] | None = None) -> Any:
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return inner(self, closure)

    return step_without_dynamo


class _WithoutDynamoHooks:
    """The four methods every optimiser inherits from `Optimizer`, undecorated; first in each class's bases."""

    add_param_group = _undecorated(Optimizer.add_param_group)
    zero_grad = _undecorated(Optimizer.zero_grad)
    state_dict = _undecorated(Optimizer.state_dict)
    load_state_dict = _undecorated(Optimizer.load_state_dict)


class Adam(_WithoutDynamoHooks, torch.optim.Adam):
    """`torch.optim.Adam`, started without importing torch._dynamo (see the module's docstring)."""

    step = _eager_step(torch.optim.Adam.step)


class AdamW(_WithoutDynamoHooks, torch.optim.AdamW):
    """`torch.optim.AdamW` (decoupled weight decay; P>M>F's meta-training), started without importing torch._dynamo."""

    step = _eager_step(torch.optim.AdamW.step)


class SGD(_WithoutDynamoHooks, torch.optim.SGD):
    """`torch.optim.SGD`, started without importing torch._dynamo (see the module's docstring)."""

    step = _eager_step(torch.optim.SGD.step)
