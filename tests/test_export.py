"""metalearn-export: the encoder as ONNX (run in onnxruntime) and as a torch.export program (run in plain
torch), each loaded in a process that never imports metalearn, gives the run's codes and logits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_main

LOAD = """
import sys, numpy as np
assert "metalearn" not in sys.modules
fmt, model, inp, out = sys.argv[1:]
x = np.load(inp)
if fmt == "onnx":
    import onnxruntime as ort
    codes = ort.InferenceSession(model).run(["codes"], {"images": x})[0]
else:
    import torch
    codes = torch.export.load(model).module()(torch.from_numpy(x)).detach().numpy()
assert not any(m == "metalearn" or m.startswith("metalearn.") for m in sys.modules)
np.save(out, codes)
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("export")
    code, text = run_main("metalearn-train", "method=protonet", "debug=smoke", "test.episodes=5", "run_dir=run", cwd=cwd)
    assert code == 0, text
    return cwd / "run"


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_exported_encoder_gives_the_runs_codes_and_logits(run, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    code, text = run_main("metalearn-export", f"run={run}", f"format={fmt}", f"out={tmp_path / ('enc.' + fmt)}",
                          cwd=tmp_path)
    assert code == 0, text
    sidecar = json.loads((tmp_path / f"enc.{fmt}.json").read_text())
    assert sidecar["preprocess"]["image_size"] == 28 and sidecar["method"] == "protonet"

    from metalearn import load_run

    learner = load_run(run)
    g = torch.Generator().manual_seed(0)
    support, query = torch.rand(10, 1, 28, 28, generator=g), torch.rand(7, 1, 28, 28, generator=g)
    images = learner.preprocess(torch.cat([support, query]))
    np.save(tmp_path / "x.npy", images.numpy())
    r = subprocess.run([sys.executable, "-c", LOAD, fmt, str(tmp_path / f"enc.{fmt}"), str(tmp_path / "x.npy"),
                        str(tmp_path / "codes.npy")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    codes = torch.from_numpy(np.load(tmp_path / "codes.npy"))
    expected = learner.embed(torch.cat([support, query])).flatten(1)
    print(f"{fmt}: largest code difference {(codes - expected).abs().max().item():.2e}")
    assert codes.shape == expected.shape and (codes - expected).abs().max() < 1e-4
    # ProtoNet's head by hand on the exported codes: minus the squared distance to each class mean
    labels = torch.arange(5).repeat_interleave(2)
    protos = torch.stack([codes[:10][labels == c].mean(0) for c in range(5)])
    logits = -torch.cdist(codes[10:].double(), protos.double()) ** 2
    ours = learner.predict(learner.preprocess(support), labels, learner.preprocess(query)).double()
    print(f"{fmt}: largest logit difference {(logits - ours).abs().max().item():.2e}")
    assert (logits - ours).abs().max() < 1e-4 * max(1.0, ours.abs().max().item())


def test_methods_without_a_fixed_encoder_are_refused(tmp_path):
    code, text = run_main("metalearn-train", "method=maml", "debug=smoke", "test.episodes=5", "run_dir=m", cwd=tmp_path)
    assert code == 0, text
    code, text = run_main("metalearn-export", f"run={tmp_path / 'm'}", "format=pt2", cwd=tmp_path)
    assert code == 2 and "maml has no fixed encoder to export" in text and "Traceback" not in text
    code, text = run_main("metalearn-export", f"run={tmp_path / 'm'}", "format=tflite", cwd=tmp_path)
    assert code == 2 and "format=tflite is not one of: onnx, pt2" in text
