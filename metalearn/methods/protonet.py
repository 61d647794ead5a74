"""Prototypical Networks (Snell et al. 2017)."""

from __future__ import annotations

from torch import nn

from metalearn.methods.base import Method, embed, one_or_many_tasks


class ProtoNet(Method):
    """Prototypes are the mean support embedding of each class; logits are negative
    squared Euclidean distances (or scaled cosine similarities) to them."""

    name = "protonet"

    def __init__(self, backbone: nn.Module, distance: str = "sqeuclidean"):
        super().__init__()
        self.backbone, self.distance = backbone, distance

    @one_or_many_tasks
    def predict(self, support, support_labels, query, ways):
        zs, zq = embed(self.backbone, support, query)
        onehot = nn.functional.one_hot(support_labels, ways).to(zs.dtype)  # [T, S, ways]
        protos = onehot.transpose(1, 2) @ zs / onehot.sum(1)[:, :, None]
        if self.distance == "cosine":
            logits = 10.0 * nn.functional.normalize(zq, dim=-1) @ nn.functional.normalize(protos, dim=-1).transpose(1, 2)
        else:
            logits = -(zq[:, :, None] - protos[:, None]).pow(2).sum(-1)  # exact, and safe at distance 0
        return logits
