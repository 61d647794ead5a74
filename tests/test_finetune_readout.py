"""readout=finetune (metalearn/readouts/finetune.py): a linear classifier trained on each task's support codes, and
with finetune_backbone=true a copy of the encoder fine-tuned with it on the support images."""

from __future__ import annotations

import torch
from conftest import tiny_method

from metalearn.config import EvalProtocol
from metalearn.readouts import build_readout
from metalearn.readouts.finetune import finetuned_logits, linear_probe


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


def tiny_protonet():
    return tiny_method("protonet", width=4, ways=4)


class LinearEncoder(torch.nn.Module):
    """The least an encoder needs for finetuned_logits: parameters and encode(images) -> codes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 32), torch.nn.ReLU())

    def encode(self, x):
        return self.net(x)


def images(seed: int = 0):
    """4 classes of 16x16 images: a bright pattern each, 3 noisy support copies and 2 query copies."""
    g = torch.Generator().manual_seed(seed)
    patterns = (torch.rand(4, 1, 16, 16, generator=g) > 0.6).float()
    xs = patterns.repeat_interleave(3, 0) + 0.3 * torch.randn(12, 1, 16, 16, generator=g)
    xq = patterns.repeat_interleave(2, 0) + 0.3 * torch.randn(8, 1, 16, 16, generator=g)
    return xs, torch.arange(4).repeat_interleave(3), xq


def test_fine_tuning_the_backbone_lowers_the_support_loss_and_leaves_the_run_as_it_was():
    method, (xs, ys, _) = LinearEncoder(), images()
    before = {k: v.clone() for k, v in method.state_dict().items()}
    losses = [float(torch.nn.functional.cross_entropy(finetuned_logits(method, xs, ys, xs, 4, steps, 0.05), ys))
              for steps in (1, 10, 40)]
    assert losses[0] > losses[1] > losses[2]
    assert losses[2] < 0.5 * losses[0]
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())  # a copy was tuned, not the run


def test_fine_tuning_the_backbone_is_inductive_and_differs_from_the_linear_probe():
    method, (xs, ys, xq) = LinearEncoder(), images()
    alone = finetuned_logits(method, xs, ys, xq[:1], 4, 20, 0.05)
    with_others = finetuned_logits(method, xs, ys, torch.cat([xq[:1], 50 * torch.randn(7, 1, 16, 16)]), 4, 20, 0.05)
    torch.testing.assert_close(alone[0], with_others[0])
    with torch.no_grad():
        zs, zq = method.encode(xs).flatten(1), method.encode(xq[:1]).flatten(1)
    probe = linear_probe(zs[None], ys[None], zq[None], 4, 20, 0.05)[0]
    assert not torch.allclose(probe, alone, atol=1e-4)  # the encoder moved too


def test_the_backbone_option_is_named_and_scores_through_the_evaluation_loop():
    import numpy as np

    from metalearn.data.store import ImageStore
    from metalearn.engine.evaluate import evaluate

    readout = build_readout("finetune", EvalProtocol(finetune_steps=5, finetune_backbone=True))
    assert readout.needs_images and readout.file_tag == "_readout-finetune-5-0.01-backbone"
    assert readout.record()["finetune"] == {"steps": 5, "lr": 0.01, "backbone": True}
    printed = EvalProtocol(finetune_steps=5, finetune_backbone=True).describe(readout)  # the result's printed line
    assert printed == ", readout: finetune (5 steps, lr 0.01, the encoder too)", printed
    g = torch.Generator().manual_seed(0)
    store = ImageStore.from_classes(torch.randint(0, 256, (6 * 5, 1, 16, 16), dtype=torch.uint8, generator=g),
                                    [5] * 6, [f"c{i}" for i in range(6)],
                                    {"train": np.zeros(0, dtype=np.int64), "test": np.arange(6)})
    protocol = EvalProtocol(split="test", ways=4, shots=2, queries=3, episodes=3, readout="finetune",
                            finetune_steps=5, finetune_backbone=True)
    r = evaluate(tiny_protonet(), store, protocol, torch.device("cpu"))
    assert len(r.per_episode) == 3 and r.summary()["finetune"]["backbone"] is True and not r.transductive
