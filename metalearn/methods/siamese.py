"""Siamese networks for one-shot recognition (Koch et al. 2015).

A verification network is trained on balanced same/different pairs of training images (see
``metalearn.tasks.sources.PairSource``): twin embeddings h1, h2 from one backbone, and

    p(same) = sigmoid(sum_j alpha_j |h1_j - h2_j| + b),

trained with binary cross-entropy. With ``embedding > 0``, h is the paper's fully connected
sigmoid layer on the flattened conv features (Koch et al.: 4096 units on a conv tower that keeps
a spatial map; here e.g. ``backbone.name=conv4_relation``, 64 x 5 x 5), so the L1 distance compares
learned bounded features rather than raw ReLU activations. At test time the network never sees a classification loss:

- ``rule: max`` (the paper): a query takes the class of the support example it is most likely
  to match; a class's logit is its best support example's same-class score;
- ``rule: kernel``: P(y | x, S) = sum_i k(x, x_i) y_i with k = p(same), normalised over classes.
"""

from __future__ import annotations

import torch
from torch import nn

from metalearn.methods.base import BuildContext, EmbeddingMethod, TrainingContext, fp32
from metalearn.registry import METHODS
from metalearn.tasks.sources import PairBatch, PairSource


class Siamese(EmbeddingMethod):
    name = "siamese"
    train_data = "pairs"

    def __init__(self, backbone: nn.Module, feature_dim: int, rule: str = "max", embedding: int = 0, pairs: int = 128,
                 hard_negatives: float = 0.0):
        super().__init__()
        self.rule, self.pairs, self.hard_negatives = rule, pairs, hard_negatives
        self.backbone = nn.Sequential(backbone, nn.Linear(feature_dim, embedding), nn.Sigmoid()) if embedding else backbone
        self.distance = nn.Linear(embedding or feature_dim, 1)  # the weighted L1 distance: alpha and b

    def training_source(self, ctx: TrainingContext) -> PairSource:
        return PairSource(ctx.store, ctx.seed, self.pairs, hard_negatives=self.hard_negatives)

    def pair_logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid same-class scores of embeddings a [..., D] and b [..., D] (broadcast)."""
        return self.distance((a - b).abs()).squeeze(-1)

    def train_step(self, batch: PairBatch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        z = fp32(self.backbone(torch.cat([batch.first, batch.second])))
        n = batch.first.shape[0]
        logits = self.pair_logits(z[:n], z[n:])
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.same)
        if torch.isfinite(loss):
            loss.backward()
            optimizer.step()
        acc = ((logits > 0).float() == batch.same).float().mean()
        return {"loss": float(loss.detach()), "accuracy": float(acc)}

    def head(self, zs, support_labels, zq, ways):
        scores = self.pair_logits(zq[:, :, None], zs[:, None])  # [T, Q, S]
        member = nn.functional.one_hot(support_labels, ways).bool()[:, None]  # [T, 1, S, ways]
        if self.rule == "kernel":
            mass = torch.sigmoid(scores) @ member[:, 0].to(scores.dtype)  # [T, Q, ways]
            return (mass / mass.sum(-1, keepdim=True).clamp_min(1e-12)).clamp_min(1e-12).log()
        return scores[..., None].masked_fill(~member, float("-inf")).amax(2)


@METHODS.register("siamese")
def build(cfg, ctx: BuildContext) -> Siamese:
    backbone = ctx.backbone(cfg)
    return Siamese(backbone, ctx.feature_dim(backbone), cfg.rule, cfg.embedding, cfg.pairs, cfg.hard_negatives)
