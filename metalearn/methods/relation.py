"""Relation Networks (Sung et al. 2018).

An embedding module maps images to feature maps; a class's feature map is the sum over its
support examples; a relation module scores every (class, query) pair from their concatenated
maps, ending in a sigmoid relation score in [0, 1]. The paper regresses the scores onto the
one-hot labels with a mean squared error (``loss: mse``); ``loss: ce`` trains the pre-sigmoid
scores with cross-entropy instead. ``predict`` returns the pre-sigmoid scores: the same argmax.
"""

from __future__ import annotations

import torch
from torch import nn

from metalearn.methods.base import BuildContext, EmbeddingMethod, fp32
from metalearn.registry import METHODS
from metalearn.tasks.episodes import EpisodeBatch


class RelationModule(nn.Module):
    """Two conv blocks (conv, batch-norm, ReLU, max-pool) on the concatenated pair, then two
    linear layers. Padded convs for small maps (Omniglot's 5x5), unpadded for large ones (19x19),
    as in the paper's two configurations."""

    def __init__(self, channels: int, map_size: tuple[int, int], hidden: int = 8):
        super().__init__()
        pad = 1 if min(map_size) < 10 else 0
        self.convs = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 3, padding=pad), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(channels, channels, 3, padding=pad), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True))
        with torch.no_grad():
            flat = self.convs.eval()(torch.zeros(2, 2 * channels, *map_size)).flatten(1).shape[1]
        self.convs.train()
        self.fc = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:  # [P, 2C, h, w] -> [P] pre-sigmoid scores
        return self.fc(self.convs(pairs).flatten(1)).squeeze(-1)


class RelationNet(EmbeddingMethod):
    name = "relation"

    def __init__(self, backbone: nn.Module, image_shape: tuple[int, int, int], hidden: int = 8, loss: str = "mse"):
        super().__init__()
        self.backbone, self.loss_kind = backbone, loss
        was = backbone.training
        with torch.no_grad():
            maps = backbone.eval().feature_maps(torch.zeros(2, *image_shape))
        backbone.train(was)
        self.relation = RelationModule(maps.shape[1], tuple(maps.shape[2:]), hidden)

    def encode(self, x):
        return self.backbone.feature_maps(x)  # [B, C, h, w]: the relation module compares maps

    def head(self, zs, support_labels, zq, ways):
        t, q, shape = zs.shape[0], zq.shape[1], zs.shape[2:]
        onehot = nn.functional.one_hot(support_labels, ways).to(zs.dtype)  # [T, S, ways]
        classes = onehot.transpose(1, 2) @ zs.flatten(2)  # the sum over each class's shots (Sung et al.)
        counts = onehot.sum(1)  # [T, ways]
        if not bool((counts == counts[:, :1]).all()):  # imbalanced shots (variable episodes): each class's mean,
            classes = classes / counts[..., None] * (counts.sum(1) / ways)[:, None, None]  # at the average shot count
        classes = classes.reshape(t, ways, *shape)
        pairs = torch.cat([classes[:, None].expand(-1, q, -1, -1, -1, -1),
                           zq[:, :, None].expand(-1, -1, ways, -1, -1, -1)], dim=3)  # [T, Q, ways, 2C, h, w]
        return self.relation(pairs.flatten(0, 2)).reshape(t, q, ways)

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        zs, zq = self.episode_codes(batch)
        logits = self.head(zs, batch.support_labels, zq, batch.ways)
        if self.loss_kind == "ce":
            loss = nn.functional.cross_entropy(fp32(logits).reshape(-1, batch.ways), batch.query_labels.reshape(-1))
        else:
            target = nn.functional.one_hot(batch.query_labels, batch.ways).to(torch.float32)
            loss = nn.functional.mse_loss(torch.sigmoid(fp32(logits)), target)
        return loss, logits


@METHODS.register("relation")
def build(cfg, ctx: BuildContext) -> RelationNet:
    return RelationNet(ctx.backbone(cfg), ctx.image_shape, cfg.hidden, cfg.loss)
