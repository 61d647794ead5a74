"""The Meta-Learner LSTM (a learned optimiser) and MANN (memory-augmented network)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from metalearn.backbones import Conv4
from metalearn.methods.inner_loop import call
from metalearn.methods.mann import MANN, LRUMemory, least_used
from metalearn.methods.meta_lstm import MetaLSTM, preprocess
from metalearn.tasks.episodes import EpisodeBatch


def tiny_batch(tasks: int = 1, seed: int = 0, dtype=torch.float32) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(2)
    return EpisodeBatch(torch.randn(tasks, 6, 1, 16, 16, generator=g, dtype=dtype), labels.expand(tasks, -1),
                        torch.randn(tasks, 6, 1, 16, 16, generator=g, dtype=dtype), labels.expand(tasks, -1), 3)


def tiny_meta_lstm(**kw) -> MetaLSTM:
    torch.manual_seed(0)
    return MetaLSTM(Conv4(1, 4, bn_running_stats=False), 4, 3, **kw)


def test_preprocessing_is_log_magnitude_and_sign_above_the_threshold_and_scaled_below():
    x = torch.tensor([2.0, -1e-3, 1e-6, -1e-5])
    out = preprocess(x, p=10.0)
    assert torch.allclose(out[0], torch.tensor([math.log(2.0) / 10, 1.0]))
    assert torch.allclose(out[1], torch.tensor([math.log(1e-3) / 10, -1.0]))
    assert torch.allclose(out[2], torch.tensor([-1.0, 1e-6 * math.exp(10)]))  # e^-10 = 4.5e-5 > 1e-6
    assert torch.allclose(out[3], torch.tensor([-1.0, -1e-5 * math.exp(10)]))


def test_with_forget_one_and_input_lr_the_update_is_plain_gradient_descent():
    m = tiny_meta_lstm().double()
    lr = 0.1
    with torch.no_grad():
        m.cell.w_forget.zero_()
        m.cell.b_forget.fill_(100.0)  # sigmoid = 1 exactly
        m.cell.w_input.zero_()
        m.cell.b_input.fill_(math.log(lr / (1 - lr)))  # sigmoid = lr
    rate = float(torch.sigmoid(m.cell.b_input.detach()))
    b = tiny_batch(dtype=torch.float64)
    theta = m.adapt(b.support[0], b.support_labels[0], steps=3)
    expected = m.theta0.detach().clone()
    for _ in range(3):
        current = expected.clone().requires_grad_()
        loss = nn.functional.cross_entropy(call(m.learner, m.unflatten(current), b.support[0]), b.support_labels[0])
        expected = expected - rate * torch.autograd.grad(loss, current)[0]
    assert abs(rate - lr) < 1e-12
    assert torch.allclose(theta, expected, rtol=0, atol=1e-12)


def test_meta_gradient_reaches_the_meta_learner_through_the_unrolled_updates():
    m = tiny_meta_lstm(inner_steps=3)
    m.train_step(tiny_batch(tasks=2), torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.0))
    for name, p in m.named_parameters():
        if name.startswith("learner."):
            assert p.grad is None  # structure only; the weights live in theta0
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_meta_lstm_adapted_weights_fit_the_support_set_better_than_the_initial_ones():
    m = tiny_meta_lstm()
    with torch.no_grad():  # gates as a sensible optimiser: keep the weights, step 0.5
        m.cell.w_forget.zero_(), m.cell.b_forget.fill_(100.0), m.cell.w_input.zero_(), m.cell.b_input.fill_(0.0)
    b = tiny_batch()
    before = nn.functional.cross_entropy(m.learner_logits(m.theta0, b.support[0]), b.support_labels[0])
    after = nn.functional.cross_entropy(m.learner_logits(m.adapt(b.support[0], b.support_labels[0], 5), b.support[0]),
                                        b.support_labels[0])
    assert after < before


def tiny_mann() -> MANN:
    torch.manual_seed(0)
    return MANN(nn.Flatten(), 8, ways=3, hidden=16, slots=10, width=6, heads=2).eval()


def test_mann_sees_each_label_one_step_late():
    m = tiny_mann()
    xs = torch.randn(1, 6, 8)
    ys = nn.functional.one_hot(torch.tensor([[0, 1, 2, 0, 1, 2]]), 3).float()
    changed = ys.clone()
    changed[0, 3] = nn.functional.one_hot(torch.tensor(2), 3).float()  # example 3's label
    with torch.no_grad():
        a, _ = m.run_sequence(xs, ys)
        b, _ = m.run_sequence(xs, changed)
    assert torch.equal(a[0, :4], b[0, :4])  # steps 0..3 cannot know it, step 3 included
    assert not torch.allclose(a[0, 4], b[0, 4])  # step 4 is the first to see it


def test_mann_read_write_and_usage_weights_sum_as_specified():
    torch.manual_seed(0)
    m = tiny_mann()
    mem: LRUMemory = m.memory
    state = m.initial_state(3, torch.zeros(1))
    for _ in range(5):
        h = torch.randn(3, 16)
        memory, usage, read, reads = mem.step(h, state)
        assert torch.allclose(read.sum(-1), torch.ones(3, 2))  # each read head's weights sum to 1
        # each head also writes with weights summing to 1, so usage grows by 2 per head
        assert torch.allclose(usage.sum(-1), 0.95 * state.usage.sum(-1) + 2 * 2, atol=1e-5)
        lu = least_used(state.usage, 2)
        assert torch.equal(lu.sum(-1), torch.ones(3, 2)) and (lu.sum(1) <= 1).all()  # distinct least-used slots
        erased = lu.amax(1).bool()
        state.memory, state.usage, state.read_weights, state.reads = memory, usage, read, reads
        assert erased.any()


def test_least_used_picks_the_smallest_usages():
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.05]])
    assert least_used(usage, 2)[0].argmax(-1).tolist() == [3, 1]


def test_mann_queries_do_not_see_each_other():
    m = tiny_mann()
    support, labels = torch.randn(3, 1, 2, 4), torch.arange(3)
    query = torch.randn(4, 1, 2, 4)
    with torch.no_grad():
        a = m.predict(support, labels, query, 3)
        b = m.predict(support, labels, query[[2, 0, 3, 1]], 3)
    assert torch.allclose(a[[2, 0, 3, 1]], b, atol=1e-6)


@pytest.mark.parametrize("name,extra", [("meta_lstm", []), ("mann", []), ("mann", ["method.encoder=conv"])],
                         ids=["meta_lstm", "mann", "mann-conv"])
@pytest.mark.e2e
def test_smoke_train_then_eval_through_the_cli(tmp_path, name, extra):
    from conftest import cli, smoke_train_then_eval

    e = smoke_train_then_eval(tmp_path, name, extra)
    assert f"{name} on synthetic test 5-way 1-shot" in e.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["method_config"]["name"] == name
    bad = cli("metalearn-eval", "run=run", "ways=9", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "sampler.train_ways=9" in bad.stderr


def test_mann_sequence_loss_covers_every_example_once_and_returns_each_querys_own_step():
    from metalearn.tasks.episodes import EpisodeBatch

    m = tiny_mann().train()
    t, ways, shots, queries = 2, 3, 1, 2
    support = torch.randn(t, ways * shots, 1, 2, 4)
    query = torch.randn(t, ways * queries, 1, 2, 4)
    s_lab = torch.arange(ways).repeat_interleave(shots).expand(t, -1)
    q_lab = torch.arange(ways).repeat_interleave(queries).expand(t, -1)
    batch = EpisodeBatch(support, s_lab, query, q_lab, ways)
    torch.manual_seed(5)
    loss, q_logits = m.loss(batch)
    torch.manual_seed(5)
    order = torch.rand(t, ways * (shots + queries)).argsort(1)  # the order the method drew
    assert q_logits.shape == (t, ways * queries, ways)
    loss.backward()
    assert m.controller.weight_ih.grad.abs().sum() > 0 and m.out.weight.grad.abs().sum() > 0
    x_all = torch.cat([support, query], 1).flatten(2)
    y_all = torch.cat([s_lab, q_lab], 1)
    total = 0.0
    with torch.no_grad():
        for k in range(t):
            xs, ys = x_all[k, order[k]][None], nn.functional.one_hot(y_all[k, order[k]], ways).float()[None]
            logits, _ = m.run_sequence(xs, ys)
            total += nn.functional.cross_entropy(logits[0], y_all[k, order[k]], reduction="sum")
            for j in range(ways * queries):  # query j's logits are those of the step that showed it
                pos = (order[k] == ways * shots + j).nonzero().item()
                assert torch.allclose(q_logits[k, j], logits[0, pos], atol=1e-6)
    assert torch.allclose(loss, total / y_all.numel(), atol=1e-6)  # every step of every sequence, once


def test_mann_wider_label_layer_gives_each_task_random_distinct_labels_and_returns_class_order():
    from metalearn.tasks.episodes import EpisodeBatch

    m = MANN(nn.Flatten(), 8, ways=7, hidden=16, slots=10, width=6, heads=2).train()  # 7 labels, 3-way tasks
    t, ways, queries = 4, 3, 2
    support, query = torch.randn(t, ways, 1, 2, 4), torch.randn(t, ways * queries, 1, 2, 4)
    s_lab, q_lab = torch.arange(ways).expand(t, -1), torch.arange(ways).repeat_interleave(queries).expand(t, -1)
    batch = EpisodeBatch(support, s_lab, query, q_lab, ways)
    seen = []
    real = m.run_sequence

    def spy(xs, ys):
        seen.append(ys.argmax(-1))
        return real(xs, ys)

    m.run_sequence = spy
    torch.manual_seed(3)
    loss, q_logits = m.loss(batch)
    torch.manual_seed(3)
    order = torch.rand(t, ways * (1 + queries)).argsort(1)
    slots = torch.rand(t, 7).argsort(1)[:, :ways]  # the labels the method drew, after the order
    assert q_logits.shape == (t, ways * queries, ways) and torch.isfinite(loss)
    y_all = torch.cat([s_lab, q_lab], 1)
    for k in range(t):
        assert len(set(slots[k].tolist())) == ways
        assert torch.equal(seen[0][k], slots[k][y_all[k, order[k]]])  # class c shown as label slots[k, c]
    assert len({tuple(r) for r in slots.tolist()}) > 1  # tasks differ
    with torch.no_grad():  # query logits come back as column c = class c: the slot's column of its step
        logits, _ = real(torch.cat([support, query], 1).flatten(2).gather(
            1, order[..., None].expand(-1, -1, 8)), nn.functional.one_hot(seen[0], 7).float())
    pos = order.argsort(1)[:, ways:]
    for k in range(t):
        for j in range(ways * queries):
            assert torch.allclose(q_logits[k, j], logits[k, pos[k, j], slots[k]], atol=1e-6)
    m.eval()  # at test a 3-way task uses labels 0..2 of the 7
    out = m.predict(support[:, :3], s_lab, query, ways)
    assert out.shape == (t, ways * queries, ways)


@pytest.mark.parametrize("write", ["add", "key"])
def test_mann_writes_the_add_vector_or_the_papers_key(write):
    torch.manual_seed(0)
    mem = LRUMemory(hidden=16, slots=10, width=6, heads=2, write=write)
    m = tiny_mann()
    state = m.initial_state(3, torch.zeros(1))
    state.memory = torch.randn(3, 10, 6)
    h = torch.randn(3, 16)
    memory, *_ = mem.step(h, state)
    lu = least_used(state.usage, 2)
    gate = torch.sigmoid(mem.alpha(h))[..., None]
    written = (gate * state.read_weights + (1 - gate) * lu).transpose(1, 2)
    vector = mem.key if write == "key" else mem.add
    expected = state.memory * (1 - lu.amax(1))[..., None] + written @ torch.tanh(vector(h)).view(3, 2, 6)
    assert torch.allclose(memory, expected, atol=1e-6)
    assert (mem.add is None) == (write == "key")


def test_mann_auxiliary_loss_is_the_weighted_prototypical_loss_and_trains_the_encoder():
    from metalearn.methods.protonet import ProtoNet

    batch = tiny_batch(tasks=2)
    torch.manual_seed(0)
    encoder = Conv4(1, 4)
    plain = MANN(encoder, 4, 3, hidden=8, slots=6, width=5, heads=2, normalize_input=True).train()
    torch.manual_seed(0)
    aux = MANN(encoder, 4, 3, hidden=8, slots=6, width=5, heads=2, normalize_input=True, aux_weight=0.5).train()
    aux.load_state_dict(plain.state_dict())
    torch.manual_seed(1)
    base, _ = plain.loss(batch)
    torch.manual_seed(1)
    total, _ = aux.loss(batch)
    proto, _ = ProtoNet(encoder).train().loss(batch)  # same encoder, same images, same batch statistics
    assert torch.allclose(total, base + 0.5 * proto, atol=1e-6)
    # the prototypical term alone reaches the encoder (its gradient differs from the sequence loss's)
    encoder.zero_grad()
    (total - base).backward()
    assert next(encoder.parameters()).grad.abs().sum() > 0


def test_mann_label_slots_is_checked_and_sets_the_label_width():
    from omegaconf import OmegaConf

    from metalearn.config import MANNConfig
    from metalearn.errors import MetalearnError
    from metalearn.methods import build_method

    cfg = lambda **kw: OmegaConf.merge(OmegaConf.structured(MANNConfig), kw)  # noqa: E731
    assert build_method(cfg(label_slots=20), (1, 4, 4), ways=5).ways == 20
    assert build_method(cfg(), (1, 4, 4), ways=5).ways == 5
    with pytest.raises(MetalearnError, match="narrower than the 5-way"):
        build_method(cfg(label_slots=3), (1, 4, 4), ways=5)
    with pytest.raises(MetalearnError, match="loss_on=sequence"):
        build_method(cfg(label_slots=20, loss_on="queries"), (1, 4, 4), ways=5)


def test_mann_input_noise_perturbs_training_codes_only():
    from metalearn.errors import MetalearnError

    batch = tiny_batch(tasks=2)
    torch.manual_seed(0)
    plain = MANN(nn.Flatten(), 256, 3, hidden=8, slots=6, width=5, heads=2)
    noisy = MANN(nn.Flatten(), 256, 3, hidden=8, slots=6, width=5, heads=2, input_noise=0.5)
    noisy.load_state_dict(plain.state_dict())
    z = torch.randn(4, 256)
    torch.manual_seed(1)
    added = noisy.train().noisy(z) - z
    torch.manual_seed(1)
    assert torch.allclose(added, 0.5 * torch.randn(4, 256), atol=1e-6)  # N(0, 0.5^2), fresh per code
    torch.manual_seed(2)
    base, _ = plain.train().loss(batch)
    torch.manual_seed(2)
    perturbed, _ = noisy.loss(batch)
    assert not torch.allclose(base, perturbed)
    plain.eval(), noisy.eval()  # prediction never sees noise
    args = (batch.support[0], batch.support_labels[0], batch.query[0], 3)
    assert torch.equal(plain.predict(*args), noisy.predict(*args))
    with pytest.raises(MetalearnError, match="input_noise"):
        MANN(nn.Flatten(), 256, 3, input_noise=-0.1)
