"""FEAT (Ye et al. 2020, "Few-Shot Learning via Embedding Adaptation with Set-to-Set Functions").

ProtoNet's prototypes are computed from each class's support embeddings alone; FEAT adapts them to the
task: the set of the task's prototypes goes through a set-to-set function, a one-head Transformer block
(scaled dot-product self-attention, a linear output, dropout, a residual connection and layer norm), so
each prototype is moved by what the other classes of this task look like. Queries are scored by negative
squared Euclidean distance to the adapted prototypes over a temperature (64 in the authors' Conv-4 runs).

In training a contrastive regulariser (weight `method.balance`) makes the same function keep classes apart:
each class's support and query embeddings, as one set, go through it, and every *untransformed* embedding of
the task is classified against the centres of the transformed sets (temperature2, 16 in the authors' Conv-4
1-shot runs). The Transformer learns `method.lr_multiplier` times faster than the pre-trained encoder (the
authors' lr_mul 10).

Where the paper and the authors' code differ, this follows the code (Sha-Lab/FEAT, model/models/feat.py, read
for issue 58; checked in float64 against a re-typing of its formulas in tests/test_feat_reference.py):
- Attention dropout. The code's scaled dot-product attention drops `attn_dropout=0.1` of the attention weights in
  training, besides the 0.5 dropout on the block's output; the paper's description of the Transformer names
  neither rate. Here `method.attention_dropout` (0.1) and `method.dropout` (0.5).
- The regulariser's instances. The code scores the raw embeddings of the task's images (support and query)
  against the transformed class centres; this project scored the transformed embeddings until 2026-12-04. The
  paper's text (Sec. 3.4) could not be read on the machine this was written on (no network); the code is what
  its published numbers came from, so the code is followed.
- Per-shot settings. The authors' commands differ by shot and backbone (Conv-4: 64 / 16 / 1 at 1-shot, 32 / 64
  / 0.1 at 5-shot; ResNet-12: 64 / 64 / 0.01 and 64 / 32 / 0.1 for temperature / temperature2 / balance). Left
  null, each of the three takes the command's value for the run's training shots (AUTHORS_SETTINGS).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from metalearn.methods.base import BuildContext, EmbeddingMethod, class_centroids, fp32
from metalearn.registry import METHODS
from metalearn.tasks.episodes import EpisodeBatch

# (backbone family, 1-shot or 5-shot training) -> temperature, temperature2, balance of the authors' commands
AUTHORS_SETTINGS = {("conv4", 1): (64.0, 16.0, 1.0), ("conv4", 5): (32.0, 64.0, 0.1),
                    ("resnet", 1): (64.0, 64.0, 0.01), ("resnet", 5): (64.0, 32.0, 0.1)}


def authors_settings(backbone: str, shots: int) -> tuple[float, float, float]:
    """The authors' temperature, temperature2 and balance for a backbone (Conv-4 forms, or the ResNets and WRN,
    which take ResNet-12's) trained at `shots` (below 5: their 1-shot command; 5 and above: their 5-shot one)."""
    family = "conv4" if backbone.startswith("conv4") else "resnet"
    return AUTHORS_SETTINGS[family, 5 if shots >= 5 else 1]


class SetAttention(nn.Module):
    """One-head self-attention over the elements of each set [B, n, D] -> [B, n, D], residual and layer norm.
    In training `attention_dropout` of the attention weights and `dropout` of the output are dropped."""

    def __init__(self, dim: int, dropout: float = 0.5, attention_dropout: float = 0.1):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        for layer in (self.q, self.k, self.v):  # the authors' initialisation: std sqrt(2 / (d + d_k))
            nn.init.normal_(layer.weight, mean=0.0, std=math.sqrt(2.0 / (dim + dim)))
        self.out = nn.Linear(dim, dim)
        nn.init.xavier_normal_(self.out.weight)
        self.dropout, self.norm, self.scale = nn.Dropout(dropout), nn.LayerNorm(dim), dim ** 0.5
        self.attention_dropout = nn.Dropout(attention_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = self.attention_dropout((self.q(x) @ self.k(x).transpose(1, 2) / self.scale).softmax(-1))
        return self.norm(self.dropout(self.out(attention @ self.v(x))) + x)


def negative_distance(zq: torch.Tensor, centres: torch.Tensor, temperature: float) -> torch.Tensor:
    return -(zq[:, :, None] - centres[:, None]).pow(2).sum(-1) / temperature


class FEAT(EmbeddingMethod):
    name = "feat"

    def __init__(self, backbone: nn.Module, feature_dim: int, temperature: float = 64.0, temperature2: float = 16.0,
                 balance: float = 1.0, dropout: float = 0.5, lr_multiplier: float = 10.0, attention_dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.attention = SetAttention(feature_dim, dropout, attention_dropout)
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

    variable_training = ("its contrastive regulariser (method.balance) sets each class's support and queries side by "
                         "side in equal numbers, as the authors' code does; variable episodes have imbalanced shots. "
                         "Train it on fixed episodes and score it with metalearn-eval variable=true")

    def loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        zs, zq = self.episode_codes(batch)
        zs, zq = zs.flatten(2), zq.flatten(2)
        logits = self.head(zs, batch.support_labels, zq, batch.ways)
        loss = nn.functional.cross_entropy(fp32(logits.reshape(-1, batch.ways)), batch.query_labels.reshape(-1))
        if self.balance > 0:
            loss = loss + self.balance * self.contrastive(zs, zq, batch.ways)
        return loss, logits

    def contrastive(self, zs: torch.Tensor, zq: torch.Tensor, ways: int) -> torch.Tensor:
        """Each class's support and query embeddings as one set through the set function; each untransformed
        embedding classified against the transformed sets' centres, as the authors' code does (examples are
        grouped by class)."""
        t, d = zs.shape[0], zs.shape[-1]
        sets = torch.cat([zs.reshape(t, ways, -1, d), zq.reshape(t, ways, -1, d)], 2)  # [T, ways, n, D]
        n = sets.shape[2]
        centres = self.attention(sets.reshape(t * ways, n, d)).reshape(t, ways, n, d).mean(2)  # [T, ways, D]
        logits = negative_distance(sets.reshape(t, ways * n, d), centres, self.temperature2)
        labels = torch.arange(ways, device=zs.device).repeat_interleave(n).expand(t, -1)
        return nn.functional.cross_entropy(fp32(logits.reshape(-1, ways)), labels.reshape(-1))


@METHODS.register("feat")
def build(cfg, ctx: BuildContext) -> FEAT:
    backbone = ctx.backbone(cfg)
    authors = authors_settings(cfg.backbone.name, ctx.shots or 1)
    temperature, temperature2, balance = (authors[i] if cfg.get(k) is None else cfg[k]
                                          for i, k in enumerate(("temperature", "temperature2", "balance")))
    if any(cfg.get(k) is None for k in ("temperature", "temperature2", "balance")):
        logging.getLogger("metalearn").info(
            "feat: temperature %g, temperature2 %g, balance %g (null keys take the authors' command for %s at %d-shot)",
            temperature, temperature2, balance, cfg.backbone.name, ctx.shots or 1)
    return FEAT(backbone, ctx.feature_dim(backbone), temperature, temperature2, balance, cfg.dropout,
                cfg.lr_multiplier, cfg.get("attention_dropout", 0.1))
