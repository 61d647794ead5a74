"""method.backbone.name=timm (metalearn/backbones/timm_backbone.py): any timm model from a local weights file, which
each test saves first (nothing is downloaded), read as data, frozen in whole or in part, through training,
evaluation, predict and export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_main
from PIL import Image

timm = pytest.importorskip("timm")
from safetensors.torch import save_file  # noqa: E402  (timm's own dependency)

from metalearn.backbones.timm_backbone import TimmBackbone  # noqa: E402
from metalearn.errors import MetalearnError  # noqa: E402


def saved(tmp_path: Path, name: str, suffix: str = ".safetensors") -> Path:
    """A timm model's weights, with its ImageNet classifier, as a pre-trained file would hold them."""
    torch.manual_seed(1)
    state = {k: v.contiguous() for k, v in timm.create_model(name, pretrained=False).state_dict().items()}
    path = tmp_path / f"{name}{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    return path


def test_the_weights_file_is_loaded_and_the_models_normalisation_applied(tmp_path):
    path = saved(tmp_path, "resnet18", ".pth")
    backbone = TimmBackbone("resnet18", 3, str(path), "none").eval()
    reference = timm.create_model("resnet18", pretrained=False, num_classes=0)
    state = torch.load(path, weights_only=True)
    reference.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    reference.eval()
    backbone.set_input_stats(0.4, 0.2)  # the dataset's standardisation, undone before ImageNet's
    pixels = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(backbone((pixels - 0.4) / 0.2), reference((pixels - mean) / std), rtol=1e-4, atol=1e-5)
    # the statistics are buffers: saved and restored with the weights
    assert {"data_mean", "data_std", "model_mean", "model_std"} <= {k.split(".")[-1] for k in backbone.state_dict()}


def test_a_grey_run_adapts_the_first_conv_and_a_vit_takes_a_reduced_size(tmp_path):
    vit = TimmBackbone("vit_tiny_patch16_224", 1, str(saved(tmp_path, "vit_tiny_patch16_224")), "none").eval()
    with torch.no_grad():
        assert vit(torch.zeros(3, 1, 28, 28)).shape == (3, 192)  # 28 px: padded to two 16-px patches a side
    assert vit.model.patch_embed.proj.weight.shape[1] == 1


def test_a_file_that_does_not_fit_names_the_first_tensor(tmp_path):
    with pytest.raises(MetalearnError, match=r"does not fit resnet18: it has no tensor conv1.weight"):
        TimmBackbone("resnet18", 3, str(saved(tmp_path, "test_vit")), "none")
    other = saved(tmp_path, "resnet34", ".pth")
    with pytest.raises(MetalearnError, match=r"does not fit resnet18: the file has layer1.2"):
        TimmBackbone("resnet18", 3, str(other), "none")
    with pytest.raises(MetalearnError, match="does not exist"):
        TimmBackbone("resnet18", 3, str(tmp_path / "none.pth"), "none")
    with pytest.raises(MetalearnError, match="is not a timm model"):
        TimmBackbone("no_such_net", 3, None, "none")


class Payload:
    """Any object that is not a tensor: unpickling it could run code, so weights_only refuses it."""


def test_weights_are_read_as_data_only(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": Payload()}, path)
    with pytest.raises(MetalearnError, match="cannot be read as weights"):
        TimmBackbone("resnet18", 3, str(path), "none")


def test_freezing_all_none_or_the_first_blocks():
    frozen = TimmBackbone("resnet18", 3, None, "all")
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not any(m.training for m in frozen.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    part = TimmBackbone("resnet18", 3, None, "2")  # the stem, layer1 and layer2 frozen; layer3, layer4 trained
    trainable = {n.split(".")[0] for n, p in part.model.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4"}
    part.train()
    assert not part.model.layer1[0].bn1.training and part.model.layer4[0].bn1.training
    assert all(p.requires_grad for p in TimmBackbone("resnet18", 3, None, "none").parameters())
    with pytest.raises(MetalearnError, match="has 4 blocks after its stem"):
        TimmBackbone("resnet18", 3, None, "9")


def test_without_timm_one_line_says_what_to_install(monkeypatch):
    from metalearn.backbones import timm_backbone

    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(MetalearnError, match=r'pip install -e "\.\[timm\]"'):
        timm_backbone.require_timm()


LOAD = """
import sys, numpy as np, onnxruntime as ort
x = np.load(sys.argv[2])
np.save(sys.argv[3], ort.InferenceSession(sys.argv[1]).run(["codes"], {"images": x})[0])
"""


def test_a_timm_protonet_trains_evaluates_predicts_and_exports(tmp_path):
    weights = saved(tmp_path, "vit_tiny_patch16_224")
    code, text = run_main("metalearn-train", "method=protonet", "method.backbone.name=timm",
                          "method.backbone.model=vit_tiny_patch16_224", f"method.backbone.weights={weights}",
                          "method.backbone.freeze=10", "debug=smoke", "steps=6", "test.episodes=5", "val.every=0",
                          "run_dir=run", cwd=tmp_path)
    assert code == 0, text
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and "5w1s" in summary["test"]
    code, text = run_main("metalearn-eval", "run=run", "episodes=5", cwd=tmp_path)
    assert code == 0 and "protonet on synthetic test 5-way 1-shot" in text, text

    from metalearn import load_run

    learner = load_run(tmp_path / "run")
    blocks = learner.method.backbone.model.blocks
    assert not any(p.requires_grad for p in blocks[9].parameters()) and blocks[11].mlp.fc1.weight.requires_grad
    support = tmp_path / "support"
    for c in range(3):
        (support / f"c{c}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray((np.random.default_rng(c * 10 + i).random((20, 20)) * 255).astype(np.uint8)).save(
                support / f"c{c}" / f"{i}.png")
    code, text = run_main("metalearn-predict", "run=run", f"support={support}", f"query={support / 'c1'}",
                          "out=p.json", cwd=tmp_path)
    assert code == 0, text
    assert len(json.loads((tmp_path / "p.json").read_text())) == 2

    pytest.importorskip("onnxruntime")
    code, text = run_main("metalearn-export", "run=run", "format=onnx", f"out={tmp_path / 'enc.onnx'}", cwd=tmp_path)
    assert code == 0, text
    x = learner.preprocess(torch.rand(4, 1, 28, 28))
    np.save(tmp_path / "x.npy", x.numpy())
    r = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "enc.onnx"), str(tmp_path / "x.npy"),
                        str(tmp_path / "codes.npy")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    with torch.no_grad():
        expected = learner.method.encode(x).flatten(1)
    assert (torch.from_numpy(np.load(tmp_path / "codes.npy")) - expected).abs().max() < 1e-3


def test_the_models_own_input_is_recorded_and_an_empty_offline_cache_is_one_line(tmp_path, monkeypatch):
    backbone = TimmBackbone("resnet18", 1, None, "none")
    recorded = backbone.pretrained_input()
    assert recorded["model"] == "resnet18" and recorded["image_size"] == 224 and len(recorded["mean"]) == 1
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))  # nothing cached here, and no network is tried
    with pytest.raises(MetalearnError, match="no cached weights for resnet18"):
        TimmBackbone("resnet18", 3, "cache", "none")


def test_weights_from_timms_offline_cache(tmp_path, monkeypatch):
    """weights=cache reads the file timm would have downloaded, from the hub's folder layout, never the network."""
    hub_id = timm.create_model("resnet18", pretrained=False).pretrained_cfg["hf_hub_id"]
    repo = tmp_path / "hub" / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    src = saved(tmp_path, "resnet18")
    src.rename(repo / "snapshots" / "abc123" / "model.safetensors")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    backbone = TimmBackbone("resnet18", 3, "cache", "none")
    from safetensors.torch import load_file

    expected = load_file(str(repo / "snapshots" / "abc123" / "model.safetensors"))
    assert torch.equal(backbone.model.conv1.weight, expected["conv1.weight"])
