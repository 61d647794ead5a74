"""Prototypical Networks (Snell et al. 2017)."""

from __future__ import annotations

import torch
from torch import nn

from metalearn.methods.base import BuildContext, EmbeddingMethod, class_centroids
from metalearn.registry import METHODS


def prototype_logits(zs: torch.Tensor, support_labels: torch.Tensor, zq: torch.Tensor, ways: int,
                     distance: str = "sqeuclidean") -> torch.Tensor:
    """Support codes [T, S, D], labels [T, S], query codes [T, Q, D] -> logits [T, Q, ways]: negative
    squared Euclidean distances (or scaled cosine similarities) to each class's mean support code."""
    protos = class_centroids(zs, support_labels, ways)
    if distance == "cosine":
        return 10.0 * nn.functional.normalize(zq, dim=-1) @ nn.functional.normalize(protos, dim=-1).transpose(1, 2)
    return -(zq[:, :, None] - protos[:, None]).pow(2).sum(-1)  # exact, and safe at distance 0


class ProtoNet(EmbeddingMethod):
    """Prototypes are the mean support embedding of each class; logits are negative
    squared Euclidean distances (or scaled cosine similarities) to them."""

    name = "protonet"
    class_logits_independent = True  # a class's logit reads its own support codes only (support_index.top_k)
    graph_capturable = True

    def __init__(self, backbone: nn.Module, distance: str = "sqeuclidean"):
        super().__init__()
        self.backbone, self.distance = backbone, distance

    def head(self, zs, support_labels, zq, ways):
        return prototype_logits(zs, support_labels, zq, ways, self.distance)


@METHODS.register("protonet")
def build(cfg, ctx: BuildContext) -> ProtoNet:
    return ProtoNet(ctx.backbone(cfg), cfg.distance)
