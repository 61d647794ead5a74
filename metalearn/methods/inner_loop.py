"""The functional inner loop every gradient-based method shares.

Parameters are a dict of tensors and an inner step returns a new dict, so

- second order (MAML) is ``create_graph=True``: the meta-gradient flows through the update;
- first order (FOMAML) computes the inner gradient without a graph, i.e. treats it as a constant;
- learned per-parameter learning rates (Meta-SGD) are just more tensors in the update;
- ANIL adapts a subset of the names (the head) and leaves the body's tensors untouched.

The loop is a pure function of (params, support), which is what lets the tasks of a
meta-batch run one by one or, later, batched under ``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]
LearningRate = float | Callable[[str, int], torch.Tensor | float]


def param_key(name: str) -> str:
    """A parameter's name as a ParameterDict or buffer key (those may not contain dots)."""
    return name.replace(".", "__")


def call(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """model(x) with `params` in place of the module's own parameters (buffers stay the module's)."""
    return functional_call(model, params, (x,), strict=False)


Forward = Callable[[Params, torch.Tensor, int], torch.Tensor]


def adapt(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int, lr: LearningRate,
          names: Iterable[str] | None = None, first_order: bool = False,
          loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
          forward: Forward | None = None) -> list[Params]:
    """`steps` steps of gradient descent on loss_fn(model(x), y), starting from `params`.

    Returns the trajectory [params after step 1, ..., after step `steps`] (MAML++'s multi-step
    loss reads every entry; plain MAML the last). `lr` is a number or a function
    (name, step) -> learning rate (a tensor when it is learned). Only `names` (default: all)
    are updated. With first_order the update is differentiable in `params` only through the
    identity, as in first-order MAML. `forward(params, x, step)` replaces model(x) when the
    network itself depends on the step (MAML++'s per-step batch-norm).
    """
    names = list(params) if names is None else list(names)
    rate = (lambda _n, _k: lr) if not callable(lr) else lr
    fwd = forward or (lambda p, inputs, _k: call(model, p, inputs))
    trajectory = []
    for k in range(steps):
        loss = loss_fn(fwd(params, x, k), y)
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=not first_order)
        params = dict(params)
        for n, g in zip(names, grads, strict=True):
            params[n] = params[n] - rate(n, k) * (g.detach() if first_order else g)
        trajectory.append(params)
    return trajectory
