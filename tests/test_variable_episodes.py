"""Variable episodes (Meta-Dataset's sampler, metalearn/tasks/variable.py): its draws against the paper's rules
and constants, seeding and digests, and every method scored on them or refused by name with the reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from metalearn.config import SCHEMAS
from metalearn.data.store import ImageStore
from metalearn.engine.evaluate import evaluate_variable
from metalearn.errors import MetalearnError
from metalearn.methods import build_method
from metalearn.registry import METHODS
from metalearn.tasks.variable import VariableRules, VariableSampler, gather_one


def store_with(counts: list[int], size: int = 8, split_of=None) -> ImageStore:
    """A store whose classes hold `counts` images each (pixel value = class id), all in the test split unless
    `split_of` says otherwise."""
    images = torch.cat([torch.full((n, 1, size, size), c % 256, dtype=torch.uint8) for c, n in enumerate(counts)])
    ids = np.arange(len(counts))
    empty = np.array([], dtype=np.int64)
    splits = split_of or {"train": empty, "val": empty, "test": ids}
    return ImageStore.from_classes(images, counts, [f"c{i}" for i in range(len(counts))], splits, meta={"name": "toy"})


def test_draws_follow_meta_datasets_rules():
    rng = np.random.default_rng(0)
    counts = rng.integers(12, 700, size=80).tolist()  # unequal classes, some over the 100-per-class contribution
    store = store_with(counts)
    r = VariableRules()
    assert (r.min_ways, r.max_ways, r.max_query, r.max_support, r.max_contribution) == (5, 50, 10, 500, 100)
    assert np.isclose(np.exp(r.min_log_weight), 0.5) and np.isclose(np.exp(r.max_log_weight), 2.0)
    sampler = VariableSampler(store, "test", seed=3)
    ways_seen, sizes = [], []
    for i in range(300):
        e = sampler.episode(i)
        images = store.class_count[e.classes]
        n = e.ways
        ways_seen.append(n)
        assert 5 <= n <= 50 and len(set(e.classes.tolist())) == n
        q = len(e.query) // n
        assert q == min(10, int((images // 2).min()))  # balanced queries, at most half the smallest class
        assert np.array_equal(np.bincount(e.query_labels, minlength=n), np.full(n, q))
        shots = e.shots
        assert (shots >= 1).all() and (shots <= images - q).all()
        assert len(e.support) <= 500 and len(e.support) >= n
        sizes.append(len(e.support))
        assert not set(e.support.tolist()) & set(e.query.tolist())  # no image in both
        for c in range(n):  # every image of class c comes from class c; labels grouped, in draw order
            start, count = store.class_start[e.classes[c]], store.class_count[e.classes[c]]
            mine = np.concatenate([e.support[e.support_labels == c], e.query[e.query_labels == c]])
            assert ((mine >= start) & (mine < start + count)).all()
        assert (np.diff(e.support_labels) >= 0).all() and (np.diff(e.query_labels) >= 0).all()
    assert min(ways_seen) == 5 and max(ways_seen) >= 45  # uniform over 5..50
    assert 450 < max(sizes) <= 500  # the 500 cap binds on large draws (flooring each share leaves a few out)
    assert len({tuple(sampler.episode(i).shots.tolist()) for i in range(20)}) == 20  # imbalanced, varied


def test_support_size_and_shots_are_the_authors_formulas():
    """One episode recomputed by hand from the same generator calls: S = min(500, sum floor(beta * min(100,
    remaining) + 1)), shots_c = min(remaining_c, 1 + floor(p_c * (S - N)))."""
    counts = [30, 200, 64, 90, 500, 41, 300]
    store = store_with(counts)
    sampler = VariableSampler(store, "test", seed=11)
    e = sampler.episode(5)
    rng = np.random.default_rng([11, 5])
    n = int(rng.integers(5, len(counts) + 1))
    pick = rng.choice(len(counts), n, replace=False)
    images = np.array(counts)[pick]
    q = min(10, int((images // 2).min()))
    remaining = images - q
    beta = rng.random()
    size = int(min(np.floor(beta * np.minimum(100, remaining) + 1).sum(), 500))
    w = images * np.exp(rng.uniform(np.log(0.5), np.log(2), size=n))
    shots = np.minimum(np.floor(w / w.sum() * (size - n)).astype(int) + 1, remaining)
    assert e.ways == n and np.array_equal(e.classes, pick) and np.array_equal(e.shots, shots)


def test_episode_i_is_the_same_however_it_is_drawn_and_the_digest_sees_every_episode():
    store = store_with([40] * 30)
    a = VariableSampler(store, "test", seed=1).plans(0, 12)
    b = VariableSampler(store, "test", seed=1)
    c = [b.episode(i) for i in (11, 3, 0)]
    assert np.array_equal(c[0].support, a.episodes[11].support) and np.array_equal(c[2].query, a.episodes[0].query)
    assert a.digest() == VariableSampler(store, "test", seed=1).plans(0, 12).digest()
    assert a.digest() != VariableSampler(store, "test", seed=2).plans(0, 12).digest()
    assert a.digest() != a.slice(0, 11).digest()
    flat = a.to_dict()
    assert flat["support_offsets"][-1] == len(flat["support"]) == sum(len(e.support) for e in a.episodes)


def test_gathered_episode_holds_the_planned_images_with_their_labels():
    store = store_with([25, 30, 35, 40, 45, 50])
    e = VariableSampler(store, "test", seed=0).episode(0)
    b = gather_one(store, e)
    assert b.tasks == 1 and b.ways == e.ways and b.support.shape[1] == len(e.support)
    raw = store.images[torch.from_numpy(e.support)]
    assert torch.equal(store.normalize(raw), b.support[0])
    assert torch.equal(b.support_labels[0], torch.from_numpy(e.support_labels))


def test_too_few_classes_or_images_is_one_line():
    with pytest.raises(MetalearnError, match="at least 5 ways .* has 4 classes"):
        VariableSampler(store_with([10] * 4), "test", 0)
    with pytest.raises(MetalearnError, match="at least 2 images a class .* class c2 of toy has 1"):
        VariableSampler(store_with([10, 10, 1, 10, 10, 10]), "test", 0)


# which methods score variable episodes, and which refuse (and why): the list a user can rely on
REFUSED = {"maml": "classifier head has", "fomaml": "classifier head has", "anil": "classifier head has",
           "metasgd": "classifier head has", "mamlpp": "classifier head has", "reptile": "classifier head has",
           "meta_lstm": "classifier head has", "mann": "label input and output"}


def method_for(name: str, ways: int = 5):
    cfg = OmegaConf.structured(SCHEMAS["method"][name])
    cfg.name = name
    if "backbone" in cfg:
        cfg.backbone.width = 4
    if "encoder" in cfg:
        cfg.encoder = "conv"
    return build_method(cfg, (1, 16, 16), ways=ways, train_classes=10)


@pytest.mark.parametrize("name", sorted(METHODS.names()))
def test_every_method_scores_variable_episodes_or_is_refused_with_the_reason(name):
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 255, (60 * 14, 1, 16, 16), dtype=np.uint8))
    counts = rng.integers(8, 20, size=60).tolist()
    images = images[: sum(counts)]
    store = ImageStore.from_classes(images, counts, [f"c{i}" for i in range(60)],
                                    {"train": np.array([], dtype=np.int64), "val": np.array([], dtype=np.int64),
                                     "test": np.arange(60)},
                                    meta={"name": "toy"})
    method = method_for(name)
    if name in REFUSED:
        with pytest.raises(MetalearnError, match=f"variable episodes have 5 to 50 ways, and .*{REFUSED[name]}.*drop "
                                                 f"variable=true"):
            evaluate_variable(method, store, "test", 3, 0, torch.device("cpu"))
        return
    r = evaluate_variable(method, store, "test", 3, 0, torch.device("cpu"))
    assert len(r.per_episode) == 3 and np.isfinite(r.per_episode).all()
    assert (r.ways >= 5).all() and (r.ways <= 50).all()


# ------------------------------------------------------------------ Proto-MAML
def tiny_proto_maml(first_order: bool, steps: int = 2):
    from metalearn.methods.proto_maml import ProtoMAML

    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.Tanh()).double()
    return ProtoMAML(backbone, inner_lr=0.3, inner_steps=steps, inner_steps_eval=steps, first_order=first_order)


def toy_task(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xs, xq = torch.randn(7, 3, 2, 2, generator=g).double(), torch.randn(6, 3, 2, 2, generator=g).double()
    return xs, torch.tensor([0, 0, 0, 1, 2, 2, 1]), xq, torch.tensor([0, 1, 2, 0, 1, 2])  # imbalanced shots


def test_proto_maml_starts_each_task_at_protonets_classifier():
    """Before any step the head's softmax is ProtoNet's: -|x - c|^2 = 2c.x - |c|^2 - |x|^2, the last term shared."""
    m = tiny_proto_maml(True)
    xs, ys, xq, _ = toy_task()
    params = dict(m.backbone.named_parameters())
    head = m.prototype_head(params, xs, ys, 3)
    logits = m._logits(params | head, xq)
    zs, zq = m.backbone(xs), m.backbone(xq)
    c = torch.stack([zs[ys == k].mean(0) for k in range(3)])
    protonet = -torch.cdist(zq, c) ** 2
    torch.testing.assert_close(logits.softmax(-1), protonet.softmax(-1))


def outer_loss_at(m, theta: list[torch.Tensor], xs, ys, xq, yq, frozen: list[list[torch.Tensor]] | None = None):
    """The outer loss as a plain function of the backbone's weights, written out by hand: W = 2c, b = -|c|^2 from
    the support codes, then gradient steps on every weight, each the partial derivative in that weight (computed
    here by autograd at the current values, without a graph: the loss is then differentiated numerically). With
    `frozen`, the steps use those gradients instead (first order: constants taken at the starting weights)."""
    net = lambda ws, x: torch.tanh(x.flatten(1) @ ws[0].T + ws[1])  # noqa: E731 - the backbone, by hand
    z = net(theta, xs)
    c = torch.stack([z[ys == k].mean(0) for k in range(3)])
    ws = [*theta, 2 * c, -(c * c).sum(1)]
    used = []
    for k in range(m.inner_steps):
        with torch.enable_grad():
            leaves = [w.detach().requires_grad_() for w in ws]
            loss = torch.nn.functional.cross_entropy(net(leaves[:2], xs) @ leaves[2].T + leaves[3], ys)
            grads = list(torch.autograd.grad(loss, leaves)) if frozen is None else frozen[k]
        used.append(grads)
        ws = [w - m.inner_lr * g for w, g in zip(ws, grads, strict=True)]
    return torch.nn.functional.cross_entropy(net(ws[:2], xq) @ ws[2].T + ws[3], yq), used


def numeric_gradient(f, theta: list[torch.Tensor], eps: float = 1e-6) -> list[torch.Tensor]:
    out = []
    for i, w in enumerate(theta):
        g = torch.zeros_like(w)
        for j in range(w.numel()):
            plus = [t.detach().clone() for t in theta]
            minus = [t.detach().clone() for t in theta]
            plus[i].view(-1)[j] += eps
            minus[i].view(-1)[j] -= eps
            g.view(-1)[j] = (f(plus) - f(minus)) / (2 * eps)
        out.append(g)
    return out


@pytest.mark.parametrize("first_order", [False, True])
def test_proto_maml_outer_gradient_matches_the_unrolled_computation(first_order):
    """Second order: the method's meta-gradient equals the numerical derivative of the outer loss, whose inner steps
    are recomputed at every perturbed weight. First order: that of the outer loss with the inner gradients held at
    their values at the starting weights (FOMAML's constants), the head's prototypes still a function of them."""
    from metalearn.tasks.episodes import EpisodeBatch

    m = tiny_proto_maml(first_order)
    xs, ys, xq, yq = toy_task()
    theta = [w.detach() for w in m.backbone.parameters()]
    frozen = outer_loss_at(m, theta, xs, ys, xq, yq)[1] if first_order else None
    with torch.no_grad():
        expected = numeric_gradient(lambda t: float(outer_loss_at(m, t, xs, ys, xq, yq, frozen)[0]), theta)
    loss, _ = m.task_loss(EpisodeBatch(xs[None], ys[None], xq[None], yq[None], 3), 0)
    got = torch.autograd.grad(loss, list(m.backbone.parameters()))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    assert any(g.abs().sum() > 0 for g in got)


# which methods train on sampler=variable, and which refuse (and why)
REFUSED_TRAINING = {**REFUSED, "feat": "its contrastive regulariser"}


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(METHODS.names()))
def test_every_method_trains_a_smoke_run_on_variable_episodes_or_is_refused_by_name(name, tmp_path):
    """sampler=variable: training, validation and a variable-episode test beside the fixed one; or one line saying
    why not, before any step. Methods that train on pairs or labelled batches take variable episodes at
    validation and test."""
    import json

    from conftest import run_main

    code, text = run_main("metalearn-train", f"method={name}", "sampler=variable", "debug=smoke", "steps=4",
                          "val.every=2", "val.episodes=2", "test.episodes=2", "checkpoint_every=2", "run_dir=run",
                          cwd=tmp_path)
    if name in REFUSED_TRAINING:
        errors = [line for line in text.splitlines() if "error:" in line]
        assert code == 2 and len(errors) == 1 and "sampler=variable: " in errors[0], text
        assert REFUSED_TRAINING[name] in errors[0] and "Traceback" not in text
        return
    assert code == 0, text[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    variable = summary["test"]["variable"]
    assert variable["sampler"] == "variable" and 5 <= variable["ways_range"][0] <= variable["ways_range"][1] <= 50
    assert (tmp_path / "run" / "eval" / "test_variable.json").is_file()
    if name == "protonet":  # the report keeps variable episodes in a table of their own
        code, text = run_main("metalearn-report", "run", "--out", "rep", cwd=tmp_path)
        assert code == 0, text
        board = (tmp_path / "rep" / "leaderboard.md").read_text()
        assert "## synthetic, variable" in board and "## synthetic, 5w1s" in board


def test_codes_once_scores_as_predicting_episode_by_episode():
    """An embedding method's variable episodes are scored from each distinct image's code, encoded once; the
    per-episode accuracies equal predict's, episode by episode."""
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    counts = rng.integers(6, 14, size=30).tolist()
    images = torch.from_numpy(rng.integers(0, 255, (sum(counts), 1, 16, 16), dtype=np.uint8))
    empty = np.array([], dtype=np.int64)
    store = ImageStore.from_classes(images, counts, [f"c{i}" for i in range(30)],
                                    {"train": empty, "val": empty, "test": np.arange(30)}, meta={"name": "toy"})
    method = method_for("protonet").eval()
    r = evaluate_variable(method, store, "test", 6, 4, torch.device("cpu"))
    by_predict = []
    with torch.no_grad():
        for e in r.plans.episodes:
            b = gather_one(store, e)
            logits = method.predict(b.support, b.support_labels, b.query, b.ways)
            by_predict.append(float((logits.argmax(-1) == b.query_labels).float().mean()))
    assert np.allclose(r.per_episode, by_predict)
