"""The methods of issue 38, each checked against a hand computation or an independent formulation."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from metalearn.backbones import Conv4
from metalearn.methods.meta_baseline import MetaBaseline, centroid_cosine_logits
from metalearn.methods.metaoptnet import MetaOptNet
from metalearn.methods.simpleshot import SimpleShot, nearest_centroid_logits, transform
from metalearn.tasks.sources import LabelledBatch


def test_meta_baseline_is_temperature_times_cosine_to_centroids():
    zs = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]])  # class 0: (1,0), (3,0) -> centroid (2,0)
    labels = torch.tensor([[0, 0, 1]])
    zq = torch.tensor([[[1.0, 1.0]]])
    tau = torch.tensor(10.0, requires_grad=True)
    logits = centroid_cosine_logits(zs, labels, zq, 2, tau)
    c = 1 / 2 ** 0.5  # cos((1,1), (1,0)) = cos((1,1), (0,1))
    torch.testing.assert_close(logits, torch.tensor([[[10 * c, 10 * c]]]))
    logits[0, 0, 0].backward()
    torch.testing.assert_close(tau.grad, torch.tensor(c))  # the temperature learns
    m = MetaBaseline(Conv4(1, 8))
    assert m.log_temperature.requires_grad and float(m.temperature.detach()) == pytest.approx(10.0)
    assert not MetaBaseline(Conv4(1, 8), learn_temperature=False).log_temperature.requires_grad


LOG_SCALED = [  # (a method with a logit scale learned in log space, its parameter's name, the scale's name)
    (lambda: MetaBaseline(Conv4(1, 8)), "log_temperature", "temperature"),
    (lambda: MetaOptNet(Conv4(1, 8), scale=10.0), "log_scale", "scale"),
]


@pytest.mark.parametrize("make,log_name,name", LOG_SCALED, ids=["meta_baseline", "metaoptnet"])
def test_logit_scale_learns_at_its_own_rate_and_reads_older_checkpoints(make, log_name, name):
    """Adam moves a parameter by about its lr per step, so at the episodic lr (1e-4) a raw scale stays put;
    log(scale) in its own group at 100x moves about 1% per step, and the encoder's group is untouched."""
    m = make()
    encoder, scale = m.parameter_groups(1e-4)
    assert scale["params"] == [getattr(m, log_name)] and scale["lr"] == pytest.approx(1e-2)
    assert scale["weight_decay"] == 0.0
    assert {id(p) for p in encoder["params"]} == {id(p) for p in m.backbone.parameters()}
    assert len(encoder["params"]) + 1 == len(list(m.parameters()))  # nothing left out
    opt = torch.optim.Adam(m.parameter_groups(1e-4), lr=1e-4, weight_decay=5e-4)
    for _ in range(20):  # a loss that wants a larger scale: more confident correct logits
        opt.zero_grad()
        (-getattr(m, name)).backward()
        opt.step()
    assert float(getattr(m, name).detach()) == pytest.approx(10.0 * torch.e ** (20 * 1e-2), rel=0.01)  # Adam: about lr per step
    older = {k: v for k, v in m.state_dict().items() if k != log_name} | {name: torch.tensor(25.0)}
    m.load_state_dict(older)  # a checkpoint from before the log: the scale itself under its own name
    assert float(getattr(m, name).detach()) == pytest.approx(25.0)


def test_simpleshot_transforms_and_nearest_centroid_by_hand():
    z = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    mean = torch.tensor([1.0, 0.0])
    torch.testing.assert_close(transform(z, "un", mean), z)
    torch.testing.assert_close(transform(z, "l2n", mean), torch.tensor([[0.6, 0.8], [c := 2 ** -0.5, c]]))
    torch.testing.assert_close(transform(z, "cl2n", mean), torch.tensor([[5 ** -0.5, 2 * 5 ** -0.5], [0.0, 1.0]]))
    zs = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]]])  # centroids (1, 0) and (0, 4)
    logits = nearest_centroid_logits(zs, torch.tensor([[0, 0, 1]]), torch.tensor([[[1.0, 1.0]]]), 2)
    torch.testing.assert_close(logits, torch.tensor([[[-1.0, -10.0]]]))


def test_simpleshot_measures_the_exact_base_mean_without_changing_a_weight():
    torch.manual_seed(0)
    m = SimpleShot(Conv4(1, 8), 8, num_classes=4)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    batches = [LabelledBatch(torch.randn(6, 1, 28, 28), torch.arange(6) % 4, 4) for _ in range(3)]
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    m.train()
    for b in batches:
        stats = m.train_step(b, opt)
    assert m.training and set(stats) == {"loss", "accuracy"}
    m.eval()
    with torch.no_grad():
        expected = torch.cat([m.backbone(b.images) for b in batches]).mean(0)
    torch.testing.assert_close(m.base_mean, expected)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("feature_"))
    assert m.learns() and not any(p.requires_grad for p in m.parameters())
    zs, zq = torch.randn(1, 4, 8), torch.randn(1, 3, 8)
    labels = torch.tensor([[0, 1, 2, 3]])
    cl2n = lambda x: nn.functional.normalize(x - expected, dim=-1)  # noqa: E731
    torch.testing.assert_close(m.head(zs, labels, zq, 4), -torch.cdist(cl2n(zq), cl2n(zs)).pow(2), atol=1e-5, rtol=1e-5)


def test_ridge_head_equals_the_primal_closed_form():
    from metalearn.methods.metaoptnet import ridge_weights

    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(2, 6, 10, generator=g, dtype=torch.float64), torch.eye(3, dtype=torch.float64)[[0, 1, 2] * 2]
    ys = ys.expand(2, -1, -1)
    dual = ridge_weights(xs, ys, 50.0)
    primal = torch.linalg.solve(xs.transpose(1, 2) @ xs + 50.0 * torch.eye(10, dtype=torch.float64), xs.transpose(1, 2) @ ys)
    torch.testing.assert_close(dual, primal)


def _svm_task(seed: int, tasks: int, n: int, k: int, d: int, offset: float = 0.0):
    """Support codes with a shared direction (as Conv-4's raw codes have), their one-hot labels, and K."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(tasks, n, d, generator=g, dtype=torch.float64) + offset
    ys = nn.functional.one_hot(torch.arange(n) % k, k).to(torch.float64).expand(tasks, -1, -1)
    return xs, ys


def _ridged(xs):
    from metalearn.methods.metaoptnet import RIDGE

    kernel = xs @ xs.transpose(1, 2)
    return kernel + RIDGE * kernel.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * torch.eye(xs.shape[1],
                                                                                                dtype=xs.dtype)


def test_simplex_projection_and_the_svm_dual_against_scipy():
    """The solver's optimum is SLSQP's on the same Crammer-Singer dual (the same ridged kernel)."""
    import numpy as np
    from scipy.optimize import minimize

    from metalearn.methods.metaoptnet import project_simplex, svm_dual

    v = torch.tensor([[0.5, 2.0, -1.0], [0.1, 0.1, 0.1]], dtype=torch.float64)
    p = project_simplex(v, 1.0)
    torch.testing.assert_close(p, torch.tensor([[0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64))

    n, k, c = 6, 3, 0.1
    xs, ys = _svm_task(1, 1, n, k, 5)
    a = svm_dual(xs, ys, c, iterations=5)[0].numpy()
    kern, yy = _ridged(xs)[0].numpy(), ys[0].numpy()

    def negative_dual(flat):
        m = flat.reshape(n, k)
        return 0.5 * np.trace(m.T @ kern @ m) - (m * yy).sum()

    cons = [{"type": "eq", "fun": lambda f: f.reshape(n, k).sum(1)},
            {"type": "ineq", "fun": lambda f: (c * yy - f.reshape(n, k)).ravel()}]
    ref = minimize(negative_dual, np.zeros(n * k), constraints=cons, method="SLSQP", options={"ftol": 1e-14, "maxiter": 1000})
    assert ref.success
    assert abs(negative_dual(a.ravel()) - ref.fun) < 1e-10
    np.testing.assert_allclose(a, ref.x.reshape(n, k), atol=1e-6)
    assert np.allclose(a.sum(1), 0) and (a <= c * yy + 1e-12).all()  # feasible


@pytest.mark.parametrize("n,k,offset", [(20, 20, 5.0), (25, 5, 5.0), (100, 5, 0.0), (60, 60, 5.0)])
def test_the_svm_solution_is_the_optimum_where_unrolled_fista_needs_thousands_of_steps(n, k, offset):
    """20-way 1-shot, 5-way 5-shot, 20-way 5-shot's shape with more images than code dimensions (64), 60-way:
    equal to 20,000 restarted FISTA steps, and its KKT conditions hold."""
    from metalearn.methods.metaoptnet import active_set, dual_objective, fista, svm_dual

    c = 0.1
    xs, ys = _svm_task(2, 3, n, k, 64, offset)
    kernel = _ridged(xs)
    a = svm_dual(xs, ys, c, iterations=5)
    reference = c * ys - fista(kernel, ys, c, 20000)
    torch.testing.assert_close(a, reference, atol=1e-8, rtol=0)
    assert (dual_objective(kernel, a, ys) >= dual_objective(kernel, reference, ys) - 1e-12).all()
    assert (dual_objective(kernel, a, ys) > dual_objective(kernel, c * ys - fista(kernel, ys, c, 100), ys)).all()
    b = c * ys - a
    torch.testing.assert_close(b.sum(-1), torch.full(b.shape[:2], c, dtype=b.dtype))
    assert (b >= 0).all()
    gradient = kernel @ b - c * kernel @ ys + ys  # of the minimised objective in B; + mu[n] must be >= 0, 0 where B > 0
    mu = -(gradient * (b > 0)).sum(-1) / (b > 0).sum(-1)
    lam = gradient + mu[..., None]
    assert (lam[b > 0].abs() < 1e-8).all() and (lam > -1e-8).all()
    assert active_set(kernel, ys, c)[1].all()  # settled, no fallback


def test_the_svm_gradient_is_the_solutions_derivative():
    """Autograd through the KKT solve against central finite differences (gradcheck), and against autograd
    through 20,000 unrolled FISTA steps, which converges to the same derivative."""
    from metalearn.methods.metaoptnet import fista, svm_dual

    c = 0.1
    xs, ys = _svm_task(3, 1, 6, 3, 8, offset=1.0)
    xs.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: svm_dual(x, ys, c, 5), (xs,), eps=1e-6, atol=1e-7)
    weights = torch.randn(6, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    (exact,) = torch.autograd.grad((svm_dual(xs, ys, c, 5) * weights).sum(), xs)
    unrolled_b = fista(_ridged(xs), ys, c, 20000)
    (unrolled,) = torch.autograd.grad(((c * ys - unrolled_b) * weights).sum(), xs)
    torch.testing.assert_close(exact, unrolled, atol=1e-6, rtol=1e-4)


def test_an_unsettled_active_set_falls_back_to_fista_with_a_warning(monkeypatch, caplog):
    import logging

    from metalearn.methods import metaoptnet

    monkeypatch.setattr(metaoptnet, "ACTIVE_SET_ROUNDS", 1)
    monkeypatch.setattr(metaoptnet, "_fallbacks_said", False)
    xs, ys = _svm_task(5, 2, 20, 20, 64, offset=5.0)
    xs.requires_grad_(True)
    with caplog.at_level(logging.WARNING, logger="metalearn"):
        a = metaoptnet.svm_dual(xs, ys, 0.1, iterations=50)
    assert "did not settle in 1 rounds for 2 of 2 tasks; they used 50 projected-gradient steps" in caplog.text
    torch.testing.assert_close(a, 0.1 * ys - metaoptnet.fista(_ridged(xs), ys, 0.1, 50))
    a.sum().backward()
    assert torch.isfinite(xs.grad).all()


def test_tim_objective_by_hand_and_its_steps_lower_it():
    import math

    from metalearn.methods.tim import TIM, distance_logits, tim_loss

    zs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    onehot = torch.eye(2)[None]
    zq = torch.tensor([[[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]]])
    w = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    tau = 15.0

    def probs(z):
        d = [[-tau / 2 * sum((z[i][j] - w[0, k, j]) ** 2 for j in range(2)) for k in range(2)] for i in range(len(z))]
        return [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in d]

    ps, pq = probs(zs[0].tolist()), probs(zq[0].tolist())
    ce = -sum(math.log(ps[i][i]) for i in range(2)) / 2
    cond = -sum(p * math.log(p) for row in pq for p in row) / 3
    marg = [sum(row[k] for row in pq) / 3 for k in range(2)]
    h_marg = -sum(m * math.log(m) for m in marg)
    expected = 0.1 * ce - (1.0 * h_marg - 0.1 * cond)
    torch.testing.assert_close(tim_loss(zs, onehot, zq, w, tau, (0.1, 1.0, 0.1)), torch.tensor([expected]))

    torch.manual_seed(0)
    m = TIM(Conv4(1, 8), 8, num_classes=4, iterations=100, lr=1e-2)
    zs, zq = torch.randn(2, 6, 8), torch.randn(2, 9, 8)
    labels = torch.tensor([[0, 1, 2] * 2] * 2)
    logits = m.head(zs, labels, zq, 3)
    ns, nq = nn.functional.normalize(zs, dim=-1), nn.functional.normalize(zq, dim=-1)
    oh = nn.functional.one_hot(labels, 3).float()
    start = oh.transpose(1, 2) @ ns / 2
    # the fitted weights are those whose distance logits the head returned; recover them by refitting
    w_fit = torch.linalg.lstsq(torch.cat([nq, torch.ones(2, 9, 1)], -1), logits / tau + 0.5 * nq.pow(2).sum(-1, keepdim=True)
                               ).solution[:, :8].transpose(1, 2)
    assert (tim_loss(ns, oh, nq, w_fit, tau, m.weights) < tim_loss(ns, oh, nq, start, tau, m.weights)).all()
    assert distance_logits(nq, start, tau).shape == logits.shape


def test_tim_is_transductive_and_protonet_is_not():
    from metalearn.methods.protonet import ProtoNet
    from metalearn.methods.tim import TIM

    torch.manual_seed(0)
    zs, zq = torch.randn(1, 4, 8), torch.randn(1, 5, 8)
    labels = torch.tensor([[0, 1, 0, 1]])
    other = zq.clone()
    other[0, 4] += 3.0  # change one query
    tim = TIM(Conv4(1, 8), 8, num_classes=4, iterations=30, lr=1e-2).eval()
    assert tim.is_transductive() and not ProtoNet(Conv4(1, 8)).eval().is_transductive()
    assert not torch.allclose(tim.head(zs, labels, zq, 2)[0, 0], tim.head(zs, labels, other, 2)[0, 0])
    proto = ProtoNet(Conv4(1, 8))
    torch.testing.assert_close(proto.head(zs, labels, zq, 2)[0, 0], proto.head(zs, labels, other, 2)[0, 0])


def test_the_report_gives_transductive_results_a_table_of_their_own(tmp_path):
    from metalearn.report import leaderboard, load_results

    for name, extra in [("protonet", {}), ("tim", {"transductive": True})]:
        run = tmp_path / name
        run.mkdir()
        test = {"5w1s": {"ways": 5, "shots": 1, "accuracy": 0.9, "ci95": 0.01, "episodes_digest": "d", **extra}}
        (run / "summary.json").write_text(json.dumps({"method": name, "dataset": "omniglot", "status": "completed",
                                                      "test": test}))
    rows = leaderboard([r for run in ("protonet", "tim") for r in load_results(tmp_path / run)])
    assert {(r["task"], r["method"], r["rank"]) for r in rows} == {("5w1s", "protonet", 1),
                                                                   ("5w1s (transductive)", "tim", 1)}


def test_feat_set_attention_equals_its_formula_and_is_permutation_equivariant():
    from metalearn.methods.feat import FEAT, SetAttention

    torch.manual_seed(0)
    att = SetAttention(6, dropout=0.5).eval()
    x = torch.randn(2, 4, 6)
    q, k, v = x @ att.q.weight.T, x @ att.k.weight.T, x @ att.v.weight.T
    manual = torch.zeros_like(x)
    for b in range(2):
        for i in range(4):
            w = torch.softmax(torch.stack([q[b, i] @ k[b, j] / 6 ** 0.5 for j in range(4)]), 0)
            manual[b, i] = sum(w[j] * v[b, j] for j in range(4))
    expected = nn.functional.layer_norm(manual @ att.out.weight.T + att.out.bias + x, (6,), att.norm.weight, att.norm.bias)
    torch.testing.assert_close(att(x), expected)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(att(x[:, perm]), att(x)[:, perm])  # a set function: order does not matter

    m = FEAT(Conv4(1, 8), 8).eval()
    zs, zq = torch.randn(1, 6, 8), torch.randn(1, 5, 8)
    labels = torch.tensor([[0, 0, 1, 1, 2, 2]])
    relabel = torch.tensor([2, 0, 1])  # class c becomes relabel[c]: the logits' columns move with it
    a, b = m.head(zs, labels, zq, 3), m.head(zs, relabel[labels], zq, 3)
    torch.testing.assert_close(b[..., relabel], a)


def test_feat_contrastive_term_by_class_loops_and_its_faster_transformer():
    """Each raw embedding against the transformed sets' centres (the authors' code), class by class."""
    from metalearn.methods.feat import FEAT

    torch.manual_seed(1)
    m = FEAT(Conv4(1, 8), 8, temperature2=4.0).eval()
    ways, shots, queries = 3, 2, 2
    zs, zq = torch.randn(1, ways * shots, 8), torch.randn(1, ways * queries, 8)
    raw = [torch.cat([zs[0, c * shots:(c + 1) * shots], zq[0, c * queries:(c + 1) * queries]]) for c in range(ways)]
    centres = torch.stack([m.attention(s[None])[0].mean(0) for s in raw])  # the transformed sets' centres
    terms = [-torch.log_softmax(-((e - centres) ** 2).sum(-1) / 4.0, 0)[c] for c, s in enumerate(raw) for e in s]
    torch.testing.assert_close(m.contrastive(zs, zq, ways), torch.stack(terms).mean())
    groups = m.parameter_groups(1e-4)
    assert groups[1]["lr"] == 1e-3 and len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(m.parameters()))


def test_the_fallback_solver_only_improves_with_more_steps():
    """Restarted FISTA: more steps never give a worse dual objective (plain FISTA did, at 20 ways)."""
    from metalearn.methods.metaoptnet import dual_objective, fista

    g = torch.Generator().manual_seed(0)
    xs = torch.randn(20, 20, 64, generator=g, dtype=torch.float64) * 3
    ys = nn.functional.one_hot(torch.arange(20), 20).to(torch.float64).expand(20, -1, -1)
    kernel = xs @ xs.transpose(1, 2)
    values = [dual_objective(kernel, 0.1 * ys - fista(kernel, ys, 0.1, k), ys) for k in (5, 15, 50, 200)]
    for before, after in zip(values, values[1:], strict=False):
        assert (after >= before - 1e-9).all()


def test_metaoptnet_svm_falls_back_to_projected_gradient_when_the_kkt_system_is_singular():
    """All-zero codes (an untrained encoder's dead units) make every KKT block singular, ridge or not: the batch
    takes FISTA's steps, which need no inverse, instead of failing inside torch.linalg.solve (seen in CI on a
    48-way variable episode)."""
    from metalearn.methods.metaoptnet import svm_dual

    labels = torch.arange(4).repeat_interleave(3)
    ys = nn.functional.one_hot(labels, 4).float()[None]
    a = svm_dual(torch.zeros(1, 12, 8), ys, 0.1, 50)
    assert a.shape == (1, 12, 4) and torch.isfinite(a).all()
