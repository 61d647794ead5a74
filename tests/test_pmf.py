"""P>M>F (configs/experiment/pmf_vit_small.yaml; readout=pmf_finetune, metalearn/readouts/pmf_finetune.py): the
test-time fine-tuning lowers the support loss, never sees the queries, leaves the run's weights alone, chooses its
learning rate on validation episodes only; and the preset trains and tests a debug=smoke run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_main, tiny_method

from metalearn.config import EvalProtocol
from metalearn.data.store import ImageStore
from metalearn.engine.evaluate import evaluate
from metalearn.errors import MetalearnError
from metalearn.readouts import build_readout
from metalearn.readouts.pmf_finetune import augment, pmf_logits


def cosine_protonet():
    return tiny_method("meta_baseline", ways=4)


def task(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(4, 1, 16, 16, generator=g)
    xs = patterns.repeat_interleave(3, 0) + 0.8 * torch.randn(12, 1, 16, 16, generator=g)
    xq = patterns.repeat_interleave(2, 0) + 0.8 * torch.randn(8, 1, 16, 16, generator=g)
    return xs, torch.arange(4).repeat_interleave(3), xq


def test_augment_is_seeded_and_translation_fills_with_zeros():
    x = torch.ones(6, 3, 16, 16)
    a = augment(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, augment(x, torch.Generator().manual_seed(1)))
    assert a.shape == x.shape and not torch.equal(a, x)
    zero_rows = (a == 0).all(dim=(1, 3)).any(dim=1) | (a == 0).all(dim=(1, 2)).any(dim=1)
    assert zero_rows.any()  # some image was shifted: a whole row or column of zeros came in


def test_fine_tuning_lowers_the_support_loss_and_leaves_the_run_alone():
    method, (xs, ys, _) = cosine_protonet(), task()
    before = {k: v.clone() for k, v in method.state_dict().items()}
    plain = torch.nn.functional.cross_entropy(pmf_logits(method, xs, ys, xs, 4, 30, 0.0), ys)
    tuned = torch.nn.functional.cross_entropy(pmf_logits(method, xs, ys, xs, 4, 30, 0.003), ys)
    assert tuned < plain
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())


def test_queries_never_enter_the_fine_tuning():
    method, (xs, ys, xq) = cosine_protonet(), task()
    alone = pmf_logits(method, xs, ys, xq[:1], 4, 5, 0.003)
    crowd = pmf_logits(method, xs, ys, torch.cat([xq[:1], 30 * torch.randn(7, 1, 16, 16)]), 4, 5, 0.003)
    torch.testing.assert_close(alone[0], crowd[0])


def store(with_val: bool) -> ImageStore:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (18 * 8, 1, 16, 16), dtype=torch.uint8, generator=g)
    ids = np.arange(18)
    splits = {"train": ids[:6], "val": ids[6:12] if with_val else ids[:0], "test": ids[12:]}
    return ImageStore.from_classes(images, [8] * 18, [f"c{i}" for i in range(18)], splits)


def test_the_learning_rate_is_chosen_on_validation_episodes():
    protocol = EvalProtocol(split="test", ways=4, shots=2, queries=2, episodes=2, readout="pmf_finetune",
                            finetune_steps=2, finetune_lr_grid=[0.0, 0.001], finetune_val_episodes=3)
    assert build_readout("pmf_finetune", protocol).file_tag == "_readout-pmf-2-grid0-0.001"
    r = evaluate(cosine_protonet(), store(True), protocol, torch.device("cpu"))
    chosen = r.summary()["finetune"]
    assert set(chosen["lr_chosen_on_validation"]) == {"0", "0.001"}
    scores = chosen["lr_chosen_on_validation"]
    assert chosen["lr"] == float(max(scores, key=scores.get))
    with pytest.raises(MetalearnError, match="has no validation split; give finetune_lr= instead"):
        evaluate(cosine_protonet(), store(False), protocol, torch.device("cpu"))


def test_the_preset_trains_and_tests_a_smoke_run(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    weights = tmp_path / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_vit").state_dict().items()}, str(weights))
    code, text = run_main(
        "metalearn-train", "experiment=pmf_vit_small", "debug=smoke", "dataset=synthetic", "dataset.image_size=32",
        "hardware=cpu", "method.backbone.model=test_vit", f"method.backbone.weights={weights}", "steps=4",
        "val.every=4", "val.episodes=3", "test.episodes=2", "test.extra.0.finetune.steps=2",
        "test.extra.0.finetune.val_episodes=2", "test.extra.1.finetune.steps=2", "test.extra.1.finetune.val_episodes=2",
        "run_dir=run", cwd=tmp_path)
    assert code == 0, text
    test = json.loads((tmp_path / "run" / "summary.json").read_text())["test"]
    tuned = test["5w1s_readout-pmf-2-grid0-0.0001-0.001-0.01"]
    assert {"5w1s", "5w5s"} <= set(test) and len(tuned["finetune"]["lr_chosen_on_validation"]) == 4
