"""Gradient-based methods checked against autograd on explicitly unrolled computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metalearn.config import MAMLPlusPlusConfig
from metalearn.methods.maml import MAML
from metalearn.methods.reptile import Reptile
from metalearn.tasks.episodes import EpisodeBatch

INNER_LR, STEPS = 0.3, 2


def tiny_backbone() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh())


def tiny_batch(tasks: int = 1, seed: int = 0) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    ys = torch.tensor([0, 0, 1, 1]).expand(tasks, -1)
    yq = torch.tensor([0, 0, 0, 1, 1, 1]).expand(tasks, -1)
    return EpisodeBatch(torch.randn(tasks, 4, 1, 2, 2, generator=g, dtype=torch.float64), ys,
                        torch.randn(tasks, 6, 1, 2, 2, generator=g, dtype=torch.float64), yq, ways=2)


def tiny_maml(**kw) -> MAML:
    torch.manual_seed(0)
    return MAML(tiny_backbone(), 3, 2, INNER_LR, STEPS, STEPS, **kw).double()


def unrolled_meta_gradient(m: MAML, b: EpisodeBatch) -> tuple[torch.Tensor, ...]:
    """d/dtheta L_query(theta - a*grad L_support(...)), STEPS times, written out with torch.func."""
    names = [n for n, _ in m.model.named_parameters()]
    ce = nn.functional.cross_entropy

    def loss(p, x, y):
        return ce(functional_call(m.model, dict(zip(names, p, strict=True)), (x,)), y)

    def outer(p):
        for _ in range(STEPS):
            g = torch.func.grad(loss)(p, b.support[0], b.support_labels[0])
            p = tuple(pi - INNER_LR * gi for pi, gi in zip(p, g, strict=True))
        return loss(p, b.query[0], b.query_labels[0])

    theta = tuple(p.detach() for p in m.model.parameters())
    return torch.func.grad(outer)(theta), outer, theta


def our_meta_gradient(m: MAML, b: EpisodeBatch) -> list[torch.Tensor]:
    loss, _ = m.task_loss(b, 0)
    return list(torch.autograd.grad(loss, list(m.model.parameters())))


def test_second_order_meta_gradient_equals_the_unrolled_computation():
    m, b = tiny_maml(), tiny_batch()
    expected, outer, theta = unrolled_meta_gradient(m, b)
    ours = our_meta_gradient(m, b)
    for e, o in zip(expected, ours, strict=True):
        assert torch.allclose(e, o, atol=1e-10)
    # and both agree with central finite differences of the unrolled function (float64)
    eps = 1e-6
    for i, p in enumerate(theta):
        for j in range(min(p.numel(), 4)):
            bump = torch.zeros_like(p).view(-1)
            bump[j] = eps
            plus = tuple(q + bump.view_as(q) if k == i else q for k, q in enumerate(theta))
            minus = tuple(q - bump.view_as(q) if k == i else q for k, q in enumerate(theta))
            fd = (outer(plus) - outer(minus)) / (2 * eps)
            assert abs(float(fd) - float(ours[i].view(-1)[j])) < 1e-6


def test_first_order_gradient_is_the_query_gradient_at_the_adapted_weights():
    fo, so, b = tiny_maml(first_order=True), tiny_maml(), tiny_batch()
    ours = our_meta_gradient(fo, b)
    adapted = {k: v.detach().requires_grad_() for k, v in fo.adapt(b.support[0], b.support_labels[0], STEPS, True)[-1].items()}
    q = nn.functional.cross_entropy(functional_call(fo.model, adapted, (b.query[0],)), b.query_labels[0])
    expected = torch.autograd.grad(q, [adapted[n] for n, _ in fo.model.named_parameters()])
    for e, o in zip(expected, ours, strict=True):
        assert torch.allclose(e, o, atol=1e-12)
    second = our_meta_gradient(so, b)
    assert max(float((a - c).abs().max()) for a, c in zip(ours, second, strict=True)) > 1e-4, "first order must differ"


def test_meta_sgd_learning_rates_receive_gradients():
    m, b = tiny_maml(learn_inner_lr=True), tiny_batch()
    loss, _ = m.task_loss(b, 0)
    loss.backward()
    assert len(m.inner_lrs) == 4
    for lr in m.inner_lrs.values():
        assert lr.grad is not None and lr.grad.abs().sum() > 0
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = [p.detach().clone() for p in m.inner_lrs.values()]
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, m.inner_lrs.values(), strict=True))


def test_anil_inner_loop_leaves_the_body_untouched():
    m, b = tiny_maml(adapt_head_only=True), tiny_batch()
    adapted = m.adapt(b.support[0], b.support_labels[0], STEPS, first_order=False)[-1]
    for name, p in m.model.named_parameters():
        if name.startswith("1."):
            assert not torch.equal(adapted[name], p), name
        else:
            assert adapted[name] is p, name
    # the body still learns in the outer loop, through the head's adaptation
    g = our_meta_gradient(m, b)
    assert g[0].abs().sum() > 0


def test_maml_outer_step_over_a_meta_batch_is_the_mean_of_task_gradients():
    m, b = tiny_maml(), tiny_batch(tasks=3)
    grads = []
    for t in range(3):
        loss, _ = m.task_loss(b, t)
        grads.append(torch.autograd.grad(loss, list(m.model.parameters())))
    theta = [p.detach().clone() for p in m.model.parameters()]
    m.train_step(b, torch.optim.SGD(m.model.parameters(), lr=0.5))
    for i, p in enumerate(m.model.parameters()):
        assert torch.allclose(p, theta[i] - 0.5 * sum(g[i] for g in grads) / 3, atol=1e-12)


def test_reptile_outer_update_is_the_interpolation_formula():
    torch.manual_seed(0)
    r = Reptile(tiny_backbone(), 3, 2, inner_lr=0.05, inner_steps=3, inner_steps_eval=3, inner_batch=4,
                inner_optimizer="sgd").double()
    b, epsilon = tiny_batch(tasks=2), 0.25
    theta = {n: p.detach().clone() for n, p in r.model.named_parameters()}
    torch.manual_seed(1)
    phis = []
    for t in range(2):
        x, y = torch.cat([b.support[t], b.query[t]]), torch.cat([b.support_labels[t], b.query_labels[t]])
        phis.append(r.inner_train(x, y, 3)[0])
    torch.manual_seed(1)
    r.train_step(b, torch.optim.SGD(r.model.parameters(), lr=epsilon))
    for n, p in r.model.named_parameters():
        mean_phi = (phis[0][n] + phis[1][n]) / 2
        assert torch.allclose(p, theta[n] + epsilon * (mean_phi - theta[n]), atol=1e-12), n
        assert not torch.equal(p, theta[n])


def test_reptile_inner_adam_is_torch_adam_with_beta1_zero():
    torch.manual_seed(0)
    r = Reptile(tiny_backbone(), 3, 2, inner_lr=0.01, inner_steps=4, inner_steps_eval=4, inner_batch=3).double()
    b = tiny_batch()
    x, y = torch.cat([b.support[0], b.query[0]]), torch.cat([b.support_labels[0], b.query_labels[0]])
    phi, (v, t) = r.inner_train(x, y, 4, torch.Generator().manual_seed(5))
    reference = {n: p.detach().clone().requires_grad_() for n, p in r.model.named_parameters()}
    opt = torch.optim.Adam(reference.values(), lr=0.01, betas=(0.0, 0.999), eps=1e-8)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(5))
    for k in range(4):
        idx = order[(torch.arange(3) + 3 * k) % x.shape[0]]
        opt.zero_grad()
        nn.functional.cross_entropy(functional_call(r.model, reference, (x[idx],)), y[idx]).backward()
        opt.step()
    assert t == 4
    for n, p in reference.items():
        assert torch.allclose(phi[n], p, atol=1e-12), n
        assert torch.allclose(v[n], opt.state[p]["exp_avg_sq"], atol=1e-15), n


@pytest.mark.parametrize("inner_state", ["persistent", "fresh"])
def test_reptile_inner_adam_state_carries_over_only_when_persistent(inner_state):
    torch.manual_seed(0)
    r = Reptile(tiny_backbone(), 3, 2, inner_lr=0.01, inner_steps=3, inner_steps_eval=5, inner_batch=4,
                inner_state=inner_state).double()
    b = tiny_batch(tasks=2)
    r.train_step(b, torch.optim.SGD(r.model.parameters(), lr=0.5))
    saved = {n: t.clone() for n, t in r.named_buffers() if n.startswith("adam_")}
    persistent = inner_state == "persistent"
    assert int(saved["adam_t"]) == (6 if persistent else 0)  # 2 tasks x 3 steps, one optimiser throughout
    assert any(bool(t.abs().sum() > 0) for n, t in saved.items() if n != "adam_t") == persistent
    phi = r.adapt_for_test(b.support[0], b.support_labels[0])
    for n, t in r.named_buffers():  # testing never writes the state back
        if n.startswith("adam_"):
            assert torch.equal(t, saved[n]), n
    # the test adaptation starts from the saved state: the same as running it from there by hand
    start = r._adam_state()
    expected, _ = r.inner_train(b.support[0], b.support_labels[0], 5, torch.Generator().manual_seed(0), state=start)
    fresh, _ = r.inner_train(b.support[0], b.support_labels[0], 5, torch.Generator().manual_seed(0))
    for n in phi:
        assert torch.equal(phi[n], expected[n])
    assert any(not torch.allclose(phi[n], fresh[n]) for n in phi) == persistent
    # the state is checkpointed: a module loaded from the state dict adapts identically (resume)
    torch.manual_seed(1)
    loaded = Reptile(tiny_backbone(), 3, 2, inner_lr=0.01, inner_steps=3, inner_steps_eval=5, inner_batch=4,
                     inner_state=inner_state).double()
    loaded.load_state_dict(r.state_dict())
    again = loaded.adapt_for_test(b.support[0], b.support_labels[0])
    assert all(torch.equal(phi[n], again[n]) for n in phi)


def test_predict_adapts_and_returns_detached_logits():
    m, b = tiny_maml(), tiny_batch(tasks=2)
    logits = m.predict(b.support, b.support_labels, b.query, 2)
    assert logits.shape == (2, 6, 2) and not logits.requires_grad
    with torch.no_grad():
        unadapted = m.model(b.query[0])
    assert not torch.allclose(logits[0], unadapted)


def test_eval_inner_steps_override_equals_a_model_built_with_that_many_steps():
    from metalearn.eval import set_inner_steps

    b = tiny_batch(tasks=2)
    three = MAML(tiny_backbone(), 3, 2, INNER_LR, STEPS, 3).double()
    m = tiny_maml()
    three.load_state_dict(m.state_dict())
    before = m.predict(b.support, b.support_labels, b.query, 2)
    set_inner_steps(m, "maml", 3)
    after = m.predict(b.support, b.support_labels, b.query, 2)
    assert torch.equal(after, three.predict(b.support, b.support_labels, b.query, 2))
    assert not torch.allclose(after, before)


def test_eval_inner_steps_refusals_name_the_reason_and_the_fix():
    from metalearn.backbones import Conv4
    from metalearn.errors import MetalearnError
    from metalearn.eval import set_inner_steps
    from metalearn.methods.protonet import ProtoNet

    with pytest.raises(MetalearnError, match=r"protonet does not adapt by inner steps; drop inner_steps="):
        set_inner_steps(ProtoNet(Conv4(1, 8)), "protonet", 5)
    with pytest.raises(MetalearnError, match=r"inner_steps must be >= 1, got 0"):
        set_inner_steps(tiny_maml(), "maml", 0)
    lslr = tiny_maml(plus=MAMLPlusPlusConfig(per_layer_per_step_lr=True))  # rates learned for STEPS steps
    with pytest.raises(MetalearnError, match=rf"for {STEPS} steps only; use inner_steps<={STEPS}"):
        set_inner_steps(lslr, "mamlpp", STEPS + 1)
    set_inner_steps(lslr, "mamlpp", 1)
    assert lslr.inner_steps_eval == 1 and lslr.eval_steps_limit() == STEPS
    plain = tiny_maml()
    set_inner_steps(plain, "maml", 50)  # one rate for every step: any count
    assert plain.eval_steps_limit() is None and plain.inner_steps_eval == 50


# ---------------------------------------------------------------- MAML++
def tiny_bn_maml(**plus) -> MAML:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten())
    return MAML(body, 12, 2, INNER_LR, STEPS, STEPS, plus=MAMLPlusPlusConfig(**plus)).double()


def test_lslr_and_msl_meta_gradient_equals_the_unrolled_computation():
    m, b = tiny_maml(plus=MAMLPlusPlusConfig(per_layer_per_step_lr=True, multi_step_loss=True, msl_anneal_steps=10)), tiny_batch()
    names = [n for n, _ in m.model.named_parameters()]
    step_lrs = [m.step_lrs[n.replace(".", "__")] for n in names]  # looked up by name, as the method does
    with torch.no_grad():
        for i, lr in enumerate(step_lrs):  # distinct rates per layer and step
            lr.copy_(torch.tensor([0.2 + 0.1 * i, 0.05 + 0.1 * i]))
    m.meta_steps.fill_(3)
    weights = m.msl_weights(STEPS)
    rates = [lr.detach() for lr in step_lrs]
    ce = nn.functional.cross_entropy

    def loss(p, x, y):
        return ce(functional_call(m.model, dict(zip(names, p, strict=True)), (x,)), y)

    def outer(p, r):
        total = 0.0
        for k in range(STEPS):
            g = torch.func.grad(loss)(p, b.support[0], b.support_labels[0])
            p = tuple(pi - ri[k] * gi for pi, gi, ri in zip(p, g, r, strict=True))
            total = total + weights[k] * loss(p, b.query[0], b.query_labels[0])
        return total

    theta = tuple(p.detach() for p in m.model.parameters())
    expected_theta, expected_rates = torch.func.grad(outer, argnums=(0, 1))(theta, tuple(rates))
    out, _ = m.task_loss(b, 0)
    ours = torch.autograd.grad(out, list(m.model.parameters()) + step_lrs)
    for e, o in zip(list(expected_theta) + list(expected_rates), ours, strict=True):
        assert torch.allclose(e, o, atol=1e-10)
    assert all(r.abs().min() > 0 for r in ours[len(theta):]), "every layer's rate at every step gets a gradient"


def test_msl_weights_anneal_to_the_final_step_then_stop():
    m = tiny_maml(plus=MAMLPlusPlusConfig(multi_step_loss=True, msl_anneal_steps=100))
    w0 = m.msl_weights(5)
    assert torch.allclose(w0, torch.full((5,), 0.2)) and torch.isclose(w0.sum(), torch.tensor(1.0))
    m.meta_steps.fill_(50)
    w = m.msl_weights(5)
    assert w[-1] > w0[-1] and (w[:-1] < w0[:-1]).all() and torch.isclose(w.sum(), torch.tensor(1.0))
    m.meta_steps.fill_(100)
    assert m.msl_weights(5) is None


def test_derivative_order_annealing_switches_from_first_to_second_order():
    b = tiny_batch()
    doa = tiny_maml(plus=MAMLPlusPlusConfig(first_order_until=5))
    early = our_meta_gradient(doa, b)
    fo = our_meta_gradient(tiny_maml(first_order=True), b)
    assert all(torch.allclose(a, c) for a, c in zip(early, fo, strict=True))
    doa.meta_steps.fill_(5)
    late = our_meta_gradient(doa, b)
    so = our_meta_gradient(tiny_maml(), b)
    assert all(torch.allclose(a, c) for a, c in zip(late, so, strict=True))


def test_per_step_batch_norm_uses_each_steps_own_weights_and_statistics():
    m = tiny_bn_maml(per_step_bn=True)
    m.model[0][1].track_running_stats = True  # BNRS needs running statistics
    m = MAML(m.model[0], 12, 2, INNER_LR, STEPS, STEPS, plus=MAMLPlusPlusConfig(per_step_bn=True)).double()
    b = tiny_batch()
    assert "0.1.weight" not in m.adapted  # batch-norm affine parameters are per step, not adapted
    loss, _ = m.task_loss(b, 0)
    loss.backward()
    grads = [m.step_bn.affine[f"0__1__w{k}"].grad for k in range(STEPS + 1)]
    assert all(g is not None and g.abs().sum() > 0 for g in grads), "steps 0..K each use their own weights"
    means = [getattr(m.step_bn, f"0__1__m{k}") for k in range(STEPS + 1)]
    assert all(not torch.equal(mu, torch.zeros(3, dtype=mu.dtype)) for mu in means), "each step's statistics moved"
    assert not torch.equal(means[0], means[1])


def test_meta_step_counter_is_checkpointed():
    m = tiny_maml(plus=MAMLPlusPlusConfig(first_order_until=3))
    m.train_step(tiny_batch(), torch.optim.SGD(m.parameters(), lr=0.01))
    assert int(m.state_dict()["meta_steps"]) == 1


@pytest.mark.parametrize("name,extra", [("maml", []), ("fomaml", []), ("anil", []), ("metasgd", []), ("reptile", []),
                                        ("maml", ["method.batch_norm=running"]), ("mamlpp", [])],
                         ids=["maml", "fomaml", "anil", "metasgd", "reptile", "maml-running-bn", "mamlpp"])
@pytest.mark.e2e
def test_smoke_train_then_eval_through_the_cli(tmp_path, name, extra):
    from conftest import cli, smoke_train_then_eval

    e = smoke_train_then_eval(tmp_path, name, extra)
    assert f"{name} on synthetic test 5-way 1-shot" in e.stdout
    if name == "maml" and not extra:  # the head fixes the way count: another is a clear error, not a crash
        bad = cli("metalearn-eval", "run=run", "ways=7", cwd=tmp_path)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr and "only be evaluated 5-way" in bad.stderr
        more = cli("metalearn-eval", "run=run", "episodes=10", "inner_steps=4", cwd=tmp_path)
        # MAML's batch norm uses the task's statistics, so its result says transductive
        assert more.returncode == 0 and ", 4 inner steps, transductive)" in more.stdout, more.stderr[-2000:]
        saved = __import__("json").loads(next((tmp_path / "run" / "eval").glob("*_steps-4.json")).read_text())
        assert saved["episodes"] == 10 and saved["inner_steps"] == 4
    summary = __import__("json").loads((tmp_path / "run" / "summary.json").read_text())
    policy = "running" if extra or name == "mamlpp" else "transductive"
    assert summary["status"] == "completed" and summary["method_config"]["batch_norm"] == policy
    assert summary["test"]["5w1s"]["inner_steps"] == summary["method_config"]["inner_steps_eval"]


# ------------------------------------------------------------------ the meta-batch under vmap
def conv_maml(**kw) -> MAML:
    from metalearn.backbones import Conv4

    torch.manual_seed(0)
    return MAML(Conv4(1, 4, "stride", bn_running_stats=False), 4, 3, INNER_LR, STEPS, STEPS, **kw).double()


def conv_batch(tasks: int = 3) -> EpisodeBatch:
    g = torch.Generator().manual_seed(1)
    ys, yq = torch.arange(3).repeat(2).expand(tasks, -1), torch.arange(3).repeat(3).expand(tasks, -1)
    return EpisodeBatch(torch.randn(tasks, 6, 1, 12, 12, generator=g, dtype=torch.float64), ys,
                        torch.randn(tasks, 9, 1, 12, 12, generator=g, dtype=torch.float64), yq, ways=3)


@pytest.mark.parametrize("kw", [{}, {"first_order": True}, {"adapt_head_only": True}, {"learn_inner_lr": True},
                                {"plus": MAMLPlusPlusConfig(per_layer_per_step_lr=True)}],
                         ids=["maml", "fomaml", "anil", "metasgd", "lslr"])
def test_vmap_and_split_over_the_meta_batch_give_the_loop_meta_gradient(kw):
    """The batched paths (torch.func.grad inside torch.func.vmap, batch-norm on batch statistics; split:
    only the inner loop batched, its query side in one thread or in several; both whole or in chunks of
    tasks) are the same computation as the task-by-task one, first and second order, with the same loss
    and accuracy."""
    b = conv_batch(tasks=5)  # 5 tasks over 3 query threads, or in chunks of 2: unequal shares
    threads = torch.get_num_threads()
    grads, stats = [], []
    for batching, query_threads, chunk in (("loop", None, None), ("vmap", None, 5), ("vmap", None, 2),
                                           ("split", 1, 5), ("split", 3, 5), ("split", 3, 2)):
        m = conv_maml(task_batching=batching, task_chunk=chunk, **kw)
        m.batching.query_threads = query_threads
        opt = torch.optim.SGD(m.parameters(), lr=0.0)
        stats.append(m.train_step(b, opt))
        grads.append([p.grad.clone() for p in m.parameters()])
        assert int(m.batching_path) == -1  # a configured path is not recorded as an auto choice
        assert torch.get_num_threads() == threads  # the query threads hand torch's thread count back
        assert len(m.batching.replicas) == (min(3, chunk) if query_threads == 3 else 0)
        assert set(m.state_dict()) == set(conv_maml(**kw).state_dict())  # the replicas are not checkpointed
    for other in grads[1:]:
        assert all(torch.allclose(a, c, rtol=1e-9, atol=1e-12) for a, c in zip(grads[0], other, strict=True))
    assert all(s == pytest.approx(stats[0]) for s in stats[1:])
    assert 0.0 <= stats[0]["accuracy"] <= 1.0


def test_first_order_under_vmap_differs_from_second_order():
    b = conv_batch()
    out = []
    for fo in (False, True):
        m = conv_maml(task_batching="vmap", first_order=fo)
        m.train_step(b, torch.optim.SGD(m.parameters(), lr=0.0))
        out.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert not torch.allclose(out[0], out[1])


def test_auto_batching_times_the_paths_once_and_keeps_its_choice():
    m = conv_maml(task_batching="auto")
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    m.train_step(conv_batch(), opt)
    choice = int(m.batching_path)
    assert choice in (0, 1, 2)
    restored = conv_maml(task_batching="auto")
    restored.load_state_dict(m.state_dict())  # a resumed run takes the same path
    assert int(restored.batching_path) == choice
    state = {k: v for k, v in m.state_dict().items() if k != "batching_path"}
    older = conv_maml(task_batching="auto")
    older.load_state_dict({**state, "uses_vmap": torch.tensor(1)})  # the buffer's old name: 1 was vmap
    assert older.batching.choose(older, conv_batch()) == "vmap"
    none = conv_maml(task_batching="auto")
    none.load_state_dict(state)  # checkpoints from before the switch still load
    assert int(none.batching_path) == -1


@pytest.mark.parametrize(("seconds", "chosen"), [
    # the fomaml preset's case: one noisy split round (0.75) above the loop's best, split's best below it
    ({"loop": [0.1, 0.69, 0.72], "vmap": [2.0, 1.31, 1.30], "split": [9.0, 0.75, 0.57]}, "split"),
    # the warm-up round does not count, however fast
    ({"loop": [0.01, 0.70, 0.71], "vmap": [2.0, 0.50, 0.60], "split": [9.0, 0.80, 0.90]}, "vmap"),
])
def test_auto_batching_keeps_each_paths_best_timed_round(monkeypatch, seconds, chosen):
    """auto's selection on a scripted clock: one warm-up round, then the fastest of the timed rounds per
    path, the rounds interleaved (loop, vmap, split, loop, ...)."""
    from metalearn.methods import task_batching
    clock, order = [0.0], []

    def scripted(method, batch, path):
        order.append(path)
        clock[0] += seconds[path].pop(0)
        return torch.tensor(0.0), [torch.tensor(1.0)]

    m = conv_maml(task_batching="auto")
    monkeypatch.setattr(task_batching.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(m.batching, "meta_gradient", scripted)
    assert task_batching.TIMED_ROUNDS == 2
    assert m.batching.choose(m, conv_batch()) == chosen
    assert order == list(task_batching.PATHS) * 3
    assert all(not left for left in seconds.values())  # every scripted round was run
    assert m.batching.choose(m, conv_batch()) == chosen and len(order) == 9  # timed once, then kept


def test_msl_and_running_statistics_fall_back_to_the_loop():
    from metalearn.backbones import Conv4

    assert not conv_maml(plus=MAMLPlusPlusConfig(multi_step_loss=True)).vmap_supported()
    assert not MAML(Conv4(1, 4, "stride"), 4, 3, INNER_LR, STEPS, STEPS).vmap_supported()
    assert conv_maml().vmap_supported()


def test_vmap_path_runs_a_channels_last_backbone():
    from metalearn.backbones import Conv4

    b = conv_batch()
    out = []
    for cl, batching in ((False, "loop"), (True, "vmap")):
        torch.manual_seed(0)
        backbone = Conv4(1, 4, "stride", channels_last=cl, bn_running_stats=False)
        m = MAML(backbone.to(memory_format=torch.channels_last) if cl else backbone, 4, 3, INNER_LR, STEPS, STEPS,
                 task_batching=batching).double()
        m.train_step(b, torch.optim.SGD(m.parameters(), lr=0.0))
        out.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
        assert backbone.channels_last == cl and not backbone.under_vmap  # restored after the batched pass
    assert torch.allclose(out[0], out[1], rtol=1e-9, atol=1e-12)


def test_channels_last_loop_gives_the_plain_meta_gradient():
    """With channels_last the 1-channel first convolution runs as patches x weight (`patch_conv`):
    MAML's second-order meta-gradient must be the one of the plain convolution."""
    from metalearn.backbones import Conv4

    b = conv_batch()
    out = []
    for cl in (False, True):
        torch.manual_seed(0)
        backbone = Conv4(1, 4, "stride", channels_last=cl, bn_running_stats=False)
        m = MAML(backbone.to(memory_format=torch.channels_last) if cl else backbone, 4, 3, INNER_LR, STEPS, STEPS,
                 task_batching="loop").double()
        m.train_step(b, torch.optim.SGD(m.parameters(), lr=0.0))
        out.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert torch.allclose(out[0], out[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kw", [dict(stride=2, padding=1), dict(padding=0, bias=False), dict(padding=(1, 2), dilation=2)])
def test_patch_conv_is_the_convolution_to_second_order(kw):
    """First and second derivatives (the ones MAML's meta-gradient uses) of `patch_conv` and conv2d agree."""
    from metalearn.backbones import patch_conv

    torch.manual_seed(0)
    conv = nn.Conv2d(1, 3, 3, **kw).double()
    x = torch.randn(2, 1, 7, 6, dtype=torch.float64, requires_grad=True)
    leaves = [x, *conv.parameters()]
    derivatives = []
    for f in (conv, lambda inp: patch_conv(conv, inp)):
        out = f(x)
        r = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        first = torch.autograd.grad((out * r).sum(), leaves, create_graph=True)
        second = torch.autograd.grad(sum((g * g).sum() for g in first), leaves, allow_unused=True)
        derivatives.append((out, first, second))
    assert derivatives[1][0].is_contiguous(memory_format=torch.channels_last)
    (out_a, first_a, second_a), (out_b, first_b, second_b) = derivatives
    assert torch.allclose(out_a, out_b, atol=1e-12)
    for a, b in zip([*first_a, *second_a], [*first_b, *second_b], strict=True):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-10)


def test_batch_statistics_norm_fused_and_plain_agree_to_second_order():
    """BatchStatNorm2d runs the fused kernel outside vmap and plain tensor ops under it: both must give
    MAML the same first and second derivatives."""
    from metalearn.backbones import BatchStatNorm2d

    g = torch.Generator().manual_seed(0)
    x0, r, v = (torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    out = []
    for fused in (True, False):
        torch.manual_seed(0)
        bn = BatchStatNorm2d(3).double()
        nn.init.normal_(bn.weight)
        bn.fused = fused
        x = x0.clone().requires_grad_()
        (gx,) = torch.autograd.grad((bn(x) * r).sum(), x, create_graph=True)
        out.append([gx, *torch.autograd.grad((gx * v).sum(), [x, bn.weight, bn.bias], allow_unused=True,
                                             materialize_grads=True)])
    assert out[0][0].abs().sum() > 0 and out[0][1].abs().sum() > 0
    assert all(torch.allclose(a, c, rtol=1e-10, atol=1e-12) for a, c in zip(*out, strict=True))


@pytest.mark.parametrize("backbone", ["conv4", "conv4_relation"])
def test_maml_batch_norm_policy_holds_on_every_backbone(backbone):
    """method.batch_norm=transductive must mean batch statistics at test time on every backbone: the
    Relation Networks' embedding once kept running statistics (untrained: a 20-way run tested at chance)."""
    from omegaconf import OmegaConf

    from metalearn.backbones import Conv4, RelationConv4
    from metalearn.config import MAMLConfig, MetaLSTMConfig
    from metalearn.methods import build_method

    x = torch.randn(6, 1, 28, 28) * 3 + 2  # far from the running statistics' initial 0 / 1
    for schema, policy in [(MAMLConfig, "transductive"), (MAMLConfig, "running"), (MetaLSTMConfig, "transductive")]:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), {"backbone": {"name": backbone}})
        if schema is MAMLConfig:
            cfg.batch_norm = policy
        m = build_method(cfg, (1, 28, 28), ways=3)
        bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
        assert len(bns) == 4 and all(b.track_running_stats == (policy == "running") for b in bns), (schema, policy)
        body = next(b for b in m.modules() if isinstance(b, (Conv4, RelationConv4)))
        with torch.no_grad():
            same = torch.allclose(body.train()(x), body.eval()(x), atol=1e-5)
        assert same == (policy == "transductive"), (schema, policy)


def test_batched_paths_bound_the_tasks_run_at_once_on_the_cpu():
    """The bound on memory: on the CPU vmap holds at most CPU_VMAP_IMAGES images at once and split the
    support side of CPU_SPLIT_TASKS tasks, unless method.task_chunk says otherwise; on another device (a
    meta tensor stands in for a GPU's) the whole meta-batch."""
    from metalearn.methods.task_batching import CPU_SPLIT_TASKS, CPU_VMAP_IMAGES, TaskBatching

    def batch(tasks: int, queries: int = 15, device: str = "cpu") -> EpisodeBatch:
        xs, xq = torch.empty(tasks, 5, 1, 4, 4, device=device), torch.empty(tasks, 5 * queries, 1, 4, 4, device=device)
        return EpisodeBatch(xs, torch.zeros(tasks, 5, dtype=torch.long), xq, torch.zeros(tasks, 5 * queries), 5)

    assert (CPU_VMAP_IMAGES, CPU_SPLIT_TASKS) == (160, 16)
    assert TaskBatching().chunk_size(batch(32), "vmap") == 2  # 80 images a task
    assert TaskBatching().chunk_size(batch(32, queries=1), "vmap") == 16  # 10 images a task
    assert TaskBatching().chunk_size(batch(32, queries=100), "vmap") == 1
    assert TaskBatching().chunk_size(batch(32), "split") == 16
    assert TaskBatching().chunk_size(batch(3), "split") == 3
    assert TaskBatching(task_chunk=8).chunk_size(batch(32), "vmap") == 8
    assert TaskBatching(task_chunk=64).chunk_size(batch(32), "split") == 32
    assert TaskBatching().chunk_size(batch(32, device="meta"), "vmap") == 32
    assert [c.tasks for c in batch(10).chunks(4)] == [4, 4, 2]
