"""A logit scale (a temperature) learned as its logarithm, in a parameter group of its own.

Why: Adam moves each parameter by about its learning rate per step, whatever the gradient's size. A raw
scale of 10 at an episodic learning rate of 1e-4 can move by 0.2 in 2,000 steps, so it is in effect fixed
(measured on Meta-Baseline: tau went from 10 to 10.1; docs/results.md, issue 38). On log(scale) an Adam
step is a relative change, the same for any start and any size of codes, and the group's own learning rate,
a multiple of the encoder's, says how fast. The scale takes no weight decay: decay would pull it to 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn


def log_parameter(start: float, learn: bool = True) -> nn.Parameter:
    """log(start) as a parameter; `learn=False` keeps the scale fixed at its start."""
    return nn.Parameter(torch.tensor(math.log(start)), requires_grad=learn)


def groups_with_scale(encoder: Iterable[nn.Parameter], log_scale: nn.Parameter, lr: float,
                      multiplier: float) -> list[dict]:
    """The optimizer's groups: the encoder at the run's learning rate, log(scale) at `multiplier` times it."""
    return [{"params": list(encoder)},
            {"params": [log_scale], "lr": lr * multiplier, "weight_decay": 0.0}]


def raw_scale_loader(raw_key: str, log_key: str) -> Callable:
    """A load_state_dict pre-hook: checkpoints written before the log parameterisation hold the scale
    itself under `raw_key`; it is read as log(scale) into `log_key`."""
    def hook(module, state_dict, prefix, *args) -> None:
        if prefix + raw_key in state_dict:
            state_dict[prefix + log_key] = state_dict.pop(prefix + raw_key).log()
    return hook
