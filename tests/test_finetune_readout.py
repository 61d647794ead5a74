"""readout=finetune (metalearn/readouts/finetune.py): a linear classifier trained on each task's support codes."""

from __future__ import annotations

import torch

from metalearn.config import EvalProtocol
from metalearn.readouts import build_readout
from metalearn.readouts.finetune import linear_probe


def codes(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(2, 4, 16, generator=g)  # 2 tasks, 4 classes
    labels = torch.arange(4).repeat_interleave(3).expand(2, -1)
    zs = centres.gather(1, labels[..., None].expand(-1, -1, 16)) + 0.3 * torch.randn(2, 12, 16, generator=g)
    zq = centres.repeat_interleave(2, 1) + 0.3 * torch.randn(2, 8, 16, generator=g)
    return zs, labels, zq, torch.arange(4).repeat_interleave(2).expand(2, -1)


def test_the_support_loss_falls_and_queries_are_classified():
    zs, ys, zq, yq = codes()
    losses = []
    for steps in (1, 10, 100):
        logits = linear_probe(zs, ys, zs, 4, steps, 0.01)  # scored on the support itself: its training loss
        losses.append(float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), ys.flatten())))
    assert losses[0] > losses[1] > losses[2]
    assert (linear_probe(zs, ys, zq, 4, 100, 0.01).argmax(-1) == yq).float().mean() == 1.0


def test_queries_never_enter_the_fine_tuning():
    """Inductive: a query's logits are the same whatever the other queries are (and however many)."""
    zs, ys, zq, _ = codes()
    alone = linear_probe(zs, ys, zq[:, :1], 4, 50, 0.01)
    with_others = linear_probe(zs, ys, torch.cat([zq[:, :1], 100 * torch.randn(2, 7, 16)], 1), 4, 50, 0.01)
    torch.testing.assert_close(alone[:, 0], with_others[:, 0])


def test_its_steps_and_rate_are_protocol_options_named_in_the_result():
    readout = build_readout("finetune", EvalProtocol(finetune_steps=30, finetune_lr=0.05))
    assert (readout.steps, readout.lr) == (30, 0.05)
    assert readout.file_tag == "_readout-finetune-30-0.05"
    assert readout.record() == {"readout": "finetune", "finetune": {"steps": 30, "lr": 0.05}}
    assert not readout.transductive
