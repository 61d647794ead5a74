"""readout=pmf_finetune: P>M>F's test-time fine-tuning (Hu et al., CVPR 2022, §3.3; the authors' ProtoNet_Finetune
in hushell/pmf_cvpr22, models/deploy.py, read for its steps, optimiser and augmentation).

For each task a fresh copy of the trained encoder takes `finetune_steps` Adam steps (betas 0.9 / 0.999, no weight
decay) at `finetune_lr`: each step, with probability 0.9, an augmented copy of the support set (colour: brightness,
saturation and contrast; translation by up to an eighth of the side, the gap filled with zeros) is classified by
the method's own head against the prototypes of the clean support set under the current weights, and the
cross-entropy of its labels is the loss. The queries are then classified by the head on the fine-tuned codes.
Only the support set is seen, so it is inductive; batch norms keep their running statistics. lr = 0 is the head
without fine-tuning. The learning rate is chosen on validation episodes from finetune_lr_grid (as the paper does)
by engine.evaluate.select_finetune_lr, never on test episodes. The augmentation draws from a generator seeded by
finetune_seed, so a task's result does not depend on what was scored before it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metalearn.methods.base import fp32
from metalearn.readouts import READOUTS, Readout
from metalearn.readouts.finetune import tunable_copy

AUG_PROB = 0.9


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """P>M>F's 'color' and 'translation' on a batch [N, C, H, W], each image its own draw."""
    n, c, h, w = x.shape
    u = lambda *shape: torch.rand(*shape, generator=g).to(x.device)  # noqa: E731
    x = x + (u(n, 1, 1, 1) - 0.5)  # brightness
    if c > 1:  # saturation: away from or towards each pixel's channel mean
        mean = x.mean(1, keepdim=True)
        x = (x - mean) * (u(n, 1, 1, 1) * 2) + mean
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * (u(n, 1, 1, 1) + 0.5) + mean  # contrast
    shift_h, shift_w = max(1, h // 8), max(1, w // 8)
    dy = (u(n) * (2 * shift_h + 1)).long() - shift_h
    dx = (u(n) * (2 * shift_w + 1)).long() - shift_w
    rows = (torch.arange(h, device=x.device)[None] - dy[:, None])  # [N, H]: the source row of each output row
    cols = (torch.arange(w, device=x.device)[None] - dx[:, None])
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    gathered = x[torch.arange(n)[:, None, None], :, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]
    return gathered.permute(0, 3, 1, 2) * inside[:, None]


def pmf_logits(method: Any, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, ways: int, steps: int, lr: float,
               seed: int = 0) -> torch.Tensor:
    """One task: the query logits [Q, ways] of the method's head after fine-tuning a copy of its encoder."""
    if lr == 0 or steps == 0:
        with torch.no_grad():
            return fp32(method.head(method.encode(xs)[None], ys[None], method.encode(xq)[None], ways)[0])
    model, params = tunable_copy(method, encoder_only=True)  # the encoder's weights, as the authors' optimiser takes
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            pseudo = augment(xs, g) if float(torch.rand((), generator=g)) < AUG_PROB else xs
            logits = model.head(model.encode(xs)[None], ys[None], model.encode(pseudo)[None], ways)[0]
            nn.functional.cross_entropy(fp32(logits), ys).backward()
            optimizer.step()
    with torch.no_grad():
        return fp32(model.head(model.encode(xs)[None], ys[None], model.encode(xq)[None], ways)[0])


@READOUTS.register("pmf_finetune")
class PMFFinetune(Readout):
    steps = 50
    lr = 0.0001
    needs_images = True

    def configure(self, protocol: Any) -> None:
        self.steps = int(getattr(protocol, "finetune_steps", self.steps))
        self.lr = float(getattr(protocol, "finetune_lr", self.lr))
        self.grid = [float(v) for v in (getattr(protocol, "finetune_lr_grid", None) or [])]
        self.chosen_from: dict | None = None  # the validation accuracy of each lr of the grid, once chosen

    @property
    def file_tag(self) -> str:
        lr = "grid" + "-".join(f"{v:g}" for v in self.grid) if self.grid else f"{self.lr:g}"
        return f"_readout-pmf-{self.steps}-{lr}"

    def record(self) -> dict:
        out = {"steps": self.steps, "lr": self.lr}
        if self.chosen_from is not None:
            out["lr_chosen_on_validation"] = self.chosen_from
        return {"readout": self.name, "finetune": out}

    def image_logits(self, method, xs, ys, xq, ways):
        return pmf_logits(method, xs, ys, xq, ways, self.steps, self.lr)
