"""Matching Networks (Vinyals et al. 2016).

A query's class distribution is an attention over the support set,

    P(y | x, S) = sum_i a(x, x_i) y_i,   a = softmax_i(scale * cos(f(x), g(x_i))),

and the logits returned are log P, so the shared cross-entropy loss is the paper's negative
log-likelihood. With full-context embeddings (``fce``) the support embeddings g are read by a
bidirectional LSTM over the whole support set, and each query embedding f is refined by an
attention LSTM that reads the support set for ``fce_steps`` processing steps.

``scale`` multiplies the cosine before the softmax. The paper has none (scale 1); with cosines in
[-1, 1] its attention is then close to uniform and training is slow, so the default is 10, as in
most reimplementations. Set ``method.scale=1`` for the paper's form.
"""

from __future__ import annotations

import torch
from torch import nn

from metalearn.methods.base import BuildContext, EmbeddingMethod
from metalearn.registry import METHODS


class SupportEncoder(nn.Module):
    """g(x_i) = g'(x_i) + forward and backward LSTM states over the support sequence."""

    def __init__(self, dim: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)

    def forward(self, zs: torch.Tensor) -> torch.Tensor:  # [T, S, D] -> [T, S, D]
        out, _ = self.lstm(zs)
        d = zs.shape[-1]
        return zs + out[..., :d] + out[..., d:]


class QueryEncoder(nn.Module):
    """f(x): an LSTM whose state attends over the (encoded) support set for `steps` steps,
    h_k = LSTM([f'(x), r_{k-1}], (h_{k-1}, c_{k-1})) + f'(x),  r_k = sum_i softmax_i(h_k . g_i) g_i."""

    def __init__(self, dim: int, steps: int):
        super().__init__()
        self.cell, self.steps = nn.LSTMCell(2 * dim, dim), steps

    def forward(self, zq: torch.Tensor, g: torch.Tensor) -> torch.Tensor:  # zq [T, Q, D], g [T, S, D]
        t, q, d = zq.shape
        h, c = zq.reshape(t * q, d), torch.zeros(t * q, d, dtype=zq.dtype, device=zq.device)
        for _ in range(self.steps):
            attention = torch.softmax(h.reshape(t, q, d) @ g.transpose(1, 2), dim=-1)  # [T, Q, S]
            read = (attention @ g).reshape(t * q, d)
            h, c = self.cell(torch.cat([zq.reshape(t * q, d), read], 1), (h, c))
            h = h + zq.reshape(t * q, d)
        return h.reshape(t, q, d)


class MatchingNet(EmbeddingMethod):
    name = "matching"

    def __init__(self, backbone: nn.Module, feature_dim: int, fce: bool = False, fce_steps: int = 5,
                 scale: float = 10.0):
        super().__init__()
        self.backbone, self.scale = backbone, scale
        self.support_encoder = SupportEncoder(feature_dim) if fce else None
        self.query_encoder = QueryEncoder(feature_dim, fce_steps) if fce else None

    def head(self, zs, support_labels, zq, ways):
        if self.support_encoder is not None:
            zs = self.support_encoder(zs)
            zq = self.query_encoder(zq, zs)
        cos = nn.functional.normalize(zq, dim=-1) @ nn.functional.normalize(zs, dim=-1).transpose(1, 2)  # [T, Q, S]
        attention = torch.softmax(self.scale * cos, dim=-1)
        probs = attention @ nn.functional.one_hot(support_labels, ways).to(attention.dtype)  # [T, Q, ways]
        return probs.clamp_min(1e-12).log()


@METHODS.register("matching")
def build(cfg, ctx: BuildContext) -> MatchingNet:
    backbone = ctx.backbone(cfg)
    return MatchingNet(backbone, ctx.feature_dim(backbone), cfg.fce, cfg.fce_steps, cfg.scale)
