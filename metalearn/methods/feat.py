"""FEAT (Ye et al. 2020, "Few-Shot Learning via Embedding Adaptation with Set-to-Set Functions").

ProtoNet's prototypes are computed from each class's support embeddings alone; FEAT adapts them to the
task: the set of the task's prototypes goes through a set-to-set function, a one-head Transformer block
(scaled dot-product self-attention, a linear output, dropout, a residual connection and layer norm), so
each prototype is moved by what the other classes of this task look like. Queries are scored by negative
squared Euclidean distance to the adapted prototypes over a temperature (64 in the authors' Conv-4 runs).

In training a contrastive regulariser (weight `method.balance`) makes the same function keep classes apart:
each class's support and query embeddings, as one set, go through it; every transformed embedding is then
classified against the centres of the transformed sets (temperature2, 16 in the authors' runs). The
Transformer learns `method.lr_multiplier` times faster than the pre-trained encoder (the authors' lr_mul 10).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metalearn.methods.base import BuildContext, EmbeddingMethod, class_centroids, embed, fp32
from metalearn.registry import METHODS
from metalearn.tasks.episodes import EpisodeBatch


class SetAttention(nn.Module):
    """One-head self-attention over the elements of each set [B, n, D] -> [B, n, D], residual and layer norm."""

    def __init__(self, dim: int, dropout: float = 0.5):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        for layer in (self.q, self.k, self.v):  # the authors' initialisation: std sqrt(2 / (d + d_k))
            nn.init.normal_(layer.weight, mean=0.0, std=math.sqrt(2.0 / (dim + dim)))
        self.out = nn.Linear(dim, dim)
        nn.init.xavier_normal_(self.out.weight)
        self.dropout, self.norm, self.scale = nn.Dropout(dropout), nn.LayerNorm(dim), dim ** 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = (self.q(x) @ self.k(x).transpose(1, 2) / self.scale).softmax(-1)
        return self.norm(self.dropout(self.out(attention @ self.v(x))) + x)


def negative_distance(zq: torch.Tensor, centres: torch.Tensor, temperature: float) -> torch.Tensor:
    return -(zq[:, :, None] - centres[:, None]).pow(2).sum(-1) / temperature


class FEAT(EmbeddingMethod):
    name = "feat"

    def __init__(self, backbone: nn.Module, feature_dim: int, temperature: float = 64.0, temperature2: float = 16.0,
                 balance: float = 1.0, dropout: float = 0.5, lr_multiplier: float = 10.0):
        super().__init__()
        self.backbone = backbone
        self.attention = SetAttention(feature_dim, dropout)
        self.temperature, self.temperature2, self.balance = temperature, temperature2, balance
        self.lr_multiplier = lr_multiplier

    def parameter_groups(self, lr: float) -> list[dict]:
        attention = list(self.attention.parameters())
        ids = {id(p) for p in attention}
        return [{"params": [p for p in self.parameters() if id(p) not in ids]},
                {"params": attention, "lr": lr * self.lr_multiplier}]

    def head(self, zs, support_labels, zq, ways):
        prototypes = self.attention(class_centroids(zs.flatten(2), support_labels, ways))
        return negative_distance(zq.flatten(2), prototypes, self.temperature)

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        zs, zq = embed(self.encode, batch.support, batch.query)
        zs, zq = zs.flatten(2), zq.flatten(2)
        logits = self.head(zs, batch.support_labels, zq, batch.ways)
        loss = nn.functional.cross_entropy(fp32(logits.reshape(-1, batch.ways)), batch.query_labels.reshape(-1))
        if self.balance > 0:
            loss = loss + self.balance * self.contrastive(zs, zq, batch.ways)
        return loss, logits

    def contrastive(self, zs: torch.Tensor, zq: torch.Tensor, ways: int) -> torch.Tensor:
        """Each class's support and query embeddings as one set through the set function, each transformed
        embedding classified against the transformed sets' centres (examples are grouped by class)."""
        t, d = zs.shape[0], zs.shape[-1]
        sets = torch.cat([zs.reshape(t, ways, -1, d), zq.reshape(t, ways, -1, d)], 2)  # [T, ways, n, D]
        n = sets.shape[2]
        transformed = self.attention(sets.reshape(t * ways, n, d)).reshape(t, ways, n, d)
        centres = transformed.mean(2)  # [T, ways, D]
        logits = negative_distance(transformed.reshape(t, ways * n, d), centres, self.temperature2)
        labels = torch.arange(ways, device=zs.device).repeat_interleave(n).expand(t, -1)
        return nn.functional.cross_entropy(fp32(logits.reshape(-1, ways)), labels.reshape(-1))


@METHODS.register("feat")
def build(cfg, ctx: BuildContext) -> FEAT:
    backbone = ctx.backbone(cfg)
    return FEAT(backbone, ctx.feature_dim(backbone), cfg.temperature, cfg.temperature2, cfg.balance, cfg.dropout,
                cfg.lr_multiplier)
