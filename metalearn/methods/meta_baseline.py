"""Meta-Baseline (Chen et al. 2021, "Meta-Baseline: Exploring Simple Meta-Learning for Few-Shot Learning").

Two stages. Classifier-Baseline: a linear classifier over all training classes (here the `baseline`
method, run as the pre-training stage, `pretrain.experiment`). Meta-Baseline: the classifier is
dropped and the encoder is meta-trained on episodes, each class represented by the centroid of its
support features, a query scored by the cosine similarity to each centroid times a learned
temperature tau (initialised to 10 in the paper's code):

    logits[q, c] = tau * cos(f(x_q), mean_{x in S_c} f(x))

tau is learned as log(tau) in a parameter group of its own, at `temperature_lr_multiplier` times the
encoder's learning rate (methods/log_scale.py says why). A raw tau at the episodic stage's lr of 1e-4 went
from 10 to 10.1 in 2,000 steps and was in effect fixed; yet on Omniglot the training loss wants tau near 35,
and the fixed 10 cost 1.8 points at 5-way and 3.5 at 20-way (docs/results.md, issue 38). (That reasoning is
Adam's; an SGD step scales with the gradient, and the SGD ResNet-12 preset sets the multiplier to 0.01 to
match the paper's step on tau.)

Why it works (the paper's finding): pre-training gives class transferability, the episodic stage
aligns the training objective with the test protocol, and the cosine metric with a learnable scale
is what lets the second stage help rather than hurt.
"""

from __future__ import annotations

import torch
from torch import nn

from metalearn.methods.base import BuildContext, EmbeddingMethod, class_centroids, on_load
from metalearn.methods.log_scale import groups_with_scale, log_parameter, raw_scale_loader
from metalearn.registry import METHODS


def centroid_cosine_logits(zs: torch.Tensor, support_labels: torch.Tensor, zq: torch.Tensor, ways: int,
                           temperature: torch.Tensor) -> torch.Tensor:
    """Support codes [T, S, D], labels [T, S], query codes [T, Q, D] -> tau * cos(query, centroid) [T, Q, ways].
    The centroid is the mean of the raw support features, normalised after averaging (the paper's order)."""
    centroids = class_centroids(zs, support_labels, ways)
    cos = nn.functional.normalize(zq, dim=-1) @ nn.functional.normalize(centroids, dim=-1).transpose(1, 2)
    return temperature * cos


class MetaBaseline(EmbeddingMethod):
    name = "meta_baseline"
    class_logits_independent = True  # a class's logit reads its own support codes only (support_index.top_k)
    graph_capturable = True

    def __init__(self, backbone: nn.Module, temperature: float = 10.0, learn_temperature: bool = True,
                 temperature_lr_multiplier: float = 100.0):
        super().__init__()
        self.backbone = backbone
        self.log_temperature = log_parameter(temperature, learn_temperature)
        self.temperature_lr_multiplier = temperature_lr_multiplier
        on_load(self, raw_scale_loader("temperature", "log_temperature"))

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def parameter_groups(self, lr: float) -> list[dict]:
        return groups_with_scale(self.backbone.parameters(), self.log_temperature, lr, self.temperature_lr_multiplier)

    def cosine_temperature(self) -> float:
        return float(self.temperature.detach())

    def head(self, zs, support_labels, zq, ways):
        return centroid_cosine_logits(zs, support_labels, zq, ways, self.temperature)


@METHODS.register("meta_baseline")
def build(cfg, ctx: BuildContext) -> MetaBaseline:
    return MetaBaseline(ctx.backbone(cfg), cfg.temperature, cfg.learn_temperature, cfg.temperature_lr_multiplier)
