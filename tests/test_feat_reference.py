"""FEAT's training loss against the authors' formulas, re-typed here from their code (Sha-Lab/FEAT,
model/models/feat.py and the trainer's labels) independently of metalearn/methods/feat.py: float64, one fixed
episode, the same weights, dropout on with the same random stream. The re-typing keeps the authors' layout
(episodes shot-major: all ways' first shot, then their second, ...) and their order of operations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalearn.methods.feat import FEAT, authors_settings
from metalearn.tasks.episodes import EpisodeBatch, episode_labels


def authors_attention(x, w_q, w_k, w_v, fc_w, fc_b, ln_w, ln_b, attn_dropout, dropout, training):
    """Their MultiHeadAttention with one head (d_k = d_v = d): residual, q/k/v maps, scaled dot product over
    sqrt(d_k), softmax on dim 2, dropout of the attention, output map, dropout, layer norm of output + residual."""
    residual, d = x, x.shape[-1]
    q, k, v = x @ w_q.T, x @ w_k.T, x @ w_v.T
    attn = torch.bmm(q, k.transpose(1, 2)) / math.pow(d, 0.5)
    attn = F.dropout(F.softmax(attn, dim=2), attn_dropout, training)
    out = F.dropout(torch.bmm(attn, v) @ fc_w.T + fc_b, dropout, training)
    return F.layer_norm(out + residual, (d,), ln_w, ln_b)


def authors_loss(support, query, way, shot, n_query, att, temperature, temperature2, balance):
    """support [shot*way, d] and query [n_query*way, d], shot-major; their _forward (use_euclidean) and their
    trainer's loss: CE(logits, arange(way).repeat(query)) + balance * CE(logits_reg, arange(way).repeat(shot + query))."""
    d = support.shape[-1]
    s = support.view(1, shot, way, d)
    proto = att(s.mean(dim=1))  # [1, way, d]
    q = query.view(-1, d).unsqueeze(1)  # [n_query*way, 1, d]
    logits = -torch.sum((proto.expand(n_query * way, way, d) - q) ** 2, 2) / temperature
    aux_task = torch.cat([s, query.view(1, n_query, way, d)], 1).permute([0, 2, 1, 3])
    aux_task = aux_task.contiguous().view(-1, shot + n_query, d)  # [way, shot+query, d]: each class's set
    aux_center = att(aux_task).view(1, way, shot + n_query, d).mean(2)  # the transformed sets' centres
    raw = aux_task.permute([1, 0, 2]).contiguous().view(-1, d).unsqueeze(1)  # the untransformed instances
    logits_reg = -torch.sum((aux_center.expand(raw.shape[0], way, d) - raw) ** 2, 2) / temperature2
    label = torch.arange(way).repeat(n_query)
    label_aux = torch.arange(way).repeat(shot + n_query)
    return F.cross_entropy(logits, label) + balance * F.cross_entropy(logits_reg, label_aux)


def shot_major(z, ways, per_class):
    """Our episodes group examples by class ([c0 k0, c0 k1, ..., c1 k0, ...]); theirs by shot."""
    return z.view(ways, per_class, -1).transpose(0, 1).reshape(ways * per_class, -1)


@pytest.mark.parametrize("shots", [1, 5])
@pytest.mark.parametrize("dropout_on", [False, True])
def test_the_training_loss_is_the_authors_on_a_fixed_episode(shots, dropout_on):
    torch.manual_seed(0)
    ways, queries, d = 5, 3, 16
    temperature, temperature2, balance = authors_settings("conv4", shots)
    dropout, attention_dropout = (0.5, 0.1) if dropout_on else (0.0, 0.0)
    m = FEAT(nn.Flatten(), d, temperature, temperature2, balance, dropout, 10.0, attention_dropout).double().train()
    support = torch.randn(1, ways * shots, d, 1, 1, dtype=torch.float64)
    query = torch.randn(1, ways * queries, d, 1, 1, dtype=torch.float64)
    batch = EpisodeBatch(support, episode_labels(1, ways, shots), query, episode_labels(1, ways, queries), ways)
    a = m.attention

    def att(x):
        return authors_attention(x, a.q.weight, a.k.weight, a.v.weight, a.out.weight, a.out.bias, a.norm.weight,
                                 a.norm.bias, attention_dropout, dropout, True)

    torch.manual_seed(7)
    ours, _ = m.loss(batch)
    torch.manual_seed(7)  # the same masks: both draw the prototypes' two masks, then the sets' two
    theirs = authors_loss(shot_major(support.flatten(1), ways, shots), shot_major(query.flatten(1), ways, queries),
                          ways, shots, queries, att, temperature, temperature2, balance)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_attention_dropout_acts_in_training_only_and_the_regulariser_reads_raw_embeddings():
    torch.manual_seed(1)
    m = FEAT(nn.Flatten(), 8, dropout=0.0, attention_dropout=0.5).double()
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    m.eval()
    torch.testing.assert_close(m.attention(x), m.attention(x))  # no dropout at test
    m.train()
    torch.manual_seed(2)
    first = m.attention(x)
    assert not torch.allclose(first, m.attention(x))  # another mask on the attention weights
    # the regulariser: raw instances against transformed centres; the transformed instances give another value
    m = FEAT(nn.Flatten(), 8, temperature2=4.0, dropout=0.0, attention_dropout=0.0).double()
    zs, zq = torch.randn(1, 6, 8, dtype=torch.float64), torch.randn(1, 6, 8, dtype=torch.float64)
    sets = torch.cat([zs.view(3, 2, 8), zq.view(3, 2, 8)], 1)
    centres = m.attention(sets).mean(1)
    raw = -((sets[:, :, None] - centres[None, None]) ** 2).sum(-1) / 4.0  # [class, member, centre]
    expected = F.cross_entropy(raw.reshape(-1, 3), torch.arange(3).repeat_interleave(4))
    torch.testing.assert_close(m.contrastive(zs, zq, 3), expected)


def test_per_shot_defaults_follow_the_authors_commands():
    from omegaconf import OmegaConf

    from metalearn.config import SCHEMAS
    from metalearn.methods import build_method

    assert authors_settings("conv4", 1) == (64.0, 16.0, 1.0) and authors_settings("conv4", 5) == (32.0, 64.0, 0.1)
    assert authors_settings("resnet12", 1) == (64.0, 64.0, 0.01) and authors_settings("resnet12", 5) == (64.0, 32.0, 0.1)
    cfg = OmegaConf.structured(SCHEMAS["method"]["feat"])
    one, five = (build_method(cfg, (1, 28, 28), 5, shots=s) for s in (1, 5))
    assert (one.temperature, one.temperature2, one.balance) == (64.0, 16.0, 1.0)
    assert (five.temperature, five.temperature2, five.balance) == (32.0, 64.0, 0.1)
    cfg.temperature2 = 8.0  # a value given is kept
    assert build_method(cfg, (1, 28, 28), 5, shots=5).temperature2 == 8.0
