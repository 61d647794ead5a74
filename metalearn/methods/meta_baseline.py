"""Meta-Baseline (Chen et al. 2021, "Meta-Baseline: Exploring Simple Meta-Learning for Few-Shot Learning").

Two stages. Classifier-Baseline: a linear classifier over all training classes (here the `baseline`
method, run as the pre-training stage, `pretrain.experiment`). Meta-Baseline: the classifier is
dropped and the encoder is meta-trained on episodes, each class represented by the centroid of its
support features, a query scored by the cosine similarity to each centroid times a learned
temperature tau (initialised to 10 in the paper's code):

    logits[q, c] = tau * cos(f(x_q), mean_{x in S_c} f(x))

Why it works (the paper's finding): pre-training gives class transferability, the episodic stage
aligns the training objective with the test protocol, and the cosine metric with a learnable scale
is what lets the second stage help rather than hurt.
"""

from __future__ import annotations

import torch
from torch import nn

from metalearn.methods.base import BuildContext, EmbeddingMethod
from metalearn.registry import METHODS


def centroid_cosine_logits(zs: torch.Tensor, support_labels: torch.Tensor, zq: torch.Tensor, ways: int,
                           temperature: torch.Tensor) -> torch.Tensor:
    """Support codes [T, S, D], labels [T, S], query codes [T, Q, D] -> tau * cos(query, centroid) [T, Q, ways].
    The centroid is the mean of the raw support features, normalised after averaging (the paper's order)."""
    onehot = nn.functional.one_hot(support_labels, ways).to(zs.dtype)  # [T, S, ways]
    centroids = onehot.transpose(1, 2) @ zs / onehot.sum(1)[:, :, None]
    cos = nn.functional.normalize(zq, dim=-1) @ nn.functional.normalize(centroids, dim=-1).transpose(1, 2)
    return temperature * cos


class MetaBaseline(EmbeddingMethod):
    name = "meta_baseline"
    graph_capturable = True

    def __init__(self, backbone: nn.Module, temperature: float = 10.0, learn_temperature: bool = True):
        super().__init__()
        self.backbone = backbone
        self.temperature = nn.Parameter(torch.tensor(float(temperature)), requires_grad=learn_temperature)

    def head(self, zs, support_labels, zq, ways):
        return centroid_cosine_logits(zs, support_labels, zq, ways, self.temperature)


@METHODS.register("meta_baseline")
def build(cfg, ctx: BuildContext) -> MetaBaseline:
    return MetaBaseline(ctx.backbone(cfg), cfg.temperature, cfg.learn_temperature)
