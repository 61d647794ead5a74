"""One registration per part: a method written here, and nowhere else, trains and evaluates through the
console scripts; the built-in parts are all found by their registries."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from conftest import run_main
from torch import nn

from metalearn.config import SCHEMAS, EmbeddingMethodConfig, schema
from metalearn.methods.base import BuildContext, EmbeddingMethod
from metalearn.readouts import READOUTS, Readout
from metalearn.registry import BACKBONES, DATASETS, METHODS


@schema("method", "cosine_centroid", "cosine_centroid")
@dataclass
class CosineCentroidConfig(EmbeddingMethodConfig):
    name: str = "cosine_centroid"
    scale: float = 10.0  # multiplies the cosine similarity before the softmax


class CosineCentroid(EmbeddingMethod):
    """Nearest class centroid by scaled cosine similarity: a method in a dozen lines."""

    def __init__(self, backbone: nn.Module, scale: float):
        super().__init__()
        self.backbone, self.scale = backbone, scale

    def head(self, zs, support_labels, zq, ways):
        centroids = torch.stack([zs[i][support_labels[i] == c].mean(0) for i in range(zs.shape[0])
                                 for c in range(ways)]).view(zs.shape[0], ways, -1)
        return self.scale * nn.functional.cosine_similarity(zq[:, :, None], centroids[:, None], dim=-1)


@METHODS.register("cosine_centroid")
def build(cfg, ctx: BuildContext) -> CosineCentroid:
    return CosineCentroid(ctx.backbone(cfg), cfg.scale)


@READOUTS.register("nearest_support")
class NearestSupport(Readout):
    """A readout in a dozen lines: each query takes the class of its nearest support code (1-NN, Euclidean)."""

    def logits(self, method, zs, support_labels, zq, ways):
        d = torch.cdist(zq.flatten(2), zs.flatten(2))  # [T, Q, S]
        member = nn.functional.one_hot(support_labels, ways).bool()[:, None]  # [T, 1, S, ways]
        return (-d)[..., None].masked_fill(~member, float("-inf")).amax(2)


@pytest.mark.e2e
def test_a_readout_defined_in_this_file_scores_a_run_through_eval_and_test_extra(tmp_path):
    """One class here, and the evaluation loop scores with it: `metalearn-eval readout=` and a `test.extra`
    setting during training, each in its own result file, each the same 1-NN accuracy as computed here."""
    import numpy as np
    from omegaconf import OmegaConf

    from metalearn.data import build_store
    from metalearn.engine.evaluate import encode_distinct
    from metalearn.engine.restore import restore_method
    from metalearn.tasks.episodes import EpisodeSampler, TaskSpec, episode_labels

    code, text = run_main("metalearn-train", "debug=smoke", "run_dir=run", "test.episodes=12",
                          "test.extra=[{ways: 5, shots: 2, readout: nearest_support}]", cwd=tmp_path)
    assert code == 0, text
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text())["test"]["5w2s_readout-nearest_support"]["readout"] == \
        "nearest_support"
    during = json.loads((run / "eval/test_5w2s_readout-nearest_support.json").read_text())
    code, text = run_main("metalearn-eval", "run=run", "episodes=12", "shots=2", "readout=nearest_support", cwd=tmp_path)
    assert code == 0 and "readout: nearest_support" in text, text
    after = json.loads((run / "eval/test_5w2s_q15_e12_seed2_best_readout-nearest_support.json").read_text())
    assert after["per_episode"] == during["per_episode"] and after["episodes_digest"] == during["episodes_digest"]

    method, _ = restore_method(run, "best")  # the readout's accuracy, computed here from the run's codes
    store = build_store(OmegaConf.load(run / "config.yaml").dataset)
    ids = EpisodeSampler(store, "test", TaskSpec(5, 2, 15), 2).plans(0, 12).image_ids()
    codes, rows = encode_distinct(method, store, ids, torch.device("cpu"))
    z = codes[rows]
    logits = NearestSupport().logits(method, z[:, :10], episode_labels(12, 5, 2), z[:, 10:], 5)
    expected = (logits.argmax(-1) == episode_labels(12, 5, 15)).double().mean(-1).numpy()
    np.testing.assert_allclose(after["per_episode"], expected)


@pytest.mark.e2e
def test_a_method_defined_in_this_file_trains_and_evaluates_through_the_cli(tmp_path):
    code, text = run_main("metalearn-train", "method=cosine_centroid", "method.scale=5", "debug=smoke",
                          "run_dir=run", cwd=tmp_path)
    assert code == 0, text
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["method_config"]["scale"] == 5.0
    assert summary["test"]["5w1s"]["accuracy"] > 0.4  # well above chance (0.2) after 20 smoke steps
    code, text = run_main("metalearn-eval", "run=run", "episodes=10", "ways=7", cwd=tmp_path)
    assert code == 0 and "cosine_centroid on synthetic test 7-way 1-shot" in text, text
    code, text = run_main("metalearn-train", "method=cosine_centroid", "method.scal=5", "debug=smoke", cwd=tmp_path)
    assert code == 2 and "method.scal is not a key of method (did you mean method.scale" in text, text


def test_every_built_in_part_is_registered_once_with_its_schema():
    assert {"protonet", "matching", "relation", "siamese", "baseline", "baselinepp", "pixel_nn", "maml", "fomaml",
            "anil", "metasgd", "mamlpp", "reptile", "meta_lstm", "mann", "meta_baseline", "simpleshot", "metaoptnet",
            "tim"} <= set(METHODS.names())
    assert set(BACKBONES.names()) == {"conv4", "conv4_relation", "resnet12", "wrn28_10", "resnet18", "timm"}
    assert set(DATASETS.names()) == {"synthetic", "omniglot", "mini_imagenet", "tiered_imagenet", "cifar_fs", "fc100",
                                     "image_folder", "cub", "multi"}
    assert {"tim", "chamfer"} <= set(READOUTS.names())
    assert set(METHODS.names()) == set(SCHEMAS["method"])  # every method has a typed config, and only methods do
    assert set(DATASETS.names()) == set(SCHEMAS["dataset"])
    with pytest.raises(ValueError, match="registered twice"):
        METHODS.register("protonet")(lambda cfg, ctx: None)
