"""Training steps with the gradient captured as a CUDA graph (metalearn.engine.cuda_graph).

On the CPU, EagerReplay stands in for the capture: these tests check the graph_loss of each capturable
method against its own train_step and the bookkeeping around a replay (fixed input buffers, gradients
written in place, eager steps in between). The capture itself is checked only where CUDA exists.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from metalearn.backbones import Conv4
from metalearn.config import MAMLPlusPlusConfig
from metalearn.engine.cuda_graph import EagerReplay, GraphedSteps, Replay
from metalearn.methods.maml import MAML
from metalearn.methods.protonet import ProtoNet
from metalearn.methods.reptile import Reptile
from metalearn.tasks.episodes import EpisodeBatch

WAYS = 3


def episodes(seed: int, tasks: int = 4, shots: int = 1, queries: int = 2, device: str = "cpu",
             dtype: torch.dtype = torch.float64) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(tasks, WAYS * shots, 1, 28, 28, generator=g, dtype=dtype)
    query = torch.randn(tasks, WAYS * queries, 1, 28, 28, generator=g, dtype=dtype)
    return EpisodeBatch(support.to(device), torch.arange(WAYS, device=device).repeat_interleave(shots).expand(tasks, -1),
                        query.to(device), torch.arange(WAYS, device=device).repeat_interleave(queries).expand(tasks, -1),
                        WAYS)


def maml(**kw) -> MAML:
    torch.manual_seed(0)
    return MAML(Conv4(1, 8, "stride", bn_running_stats=False), 8, WAYS, 0.4, 2, 2, task_batching="vmap", **kw)


def protonet() -> ProtoNet:
    torch.manual_seed(0)
    return ProtoNet(Conv4(1, 8, "max"))


METHODS = {
    "maml": maml,
    "fomaml": lambda: maml(first_order=True),
    "anil": lambda: maml(adapt_head_only=True),
    "metasgd": lambda: maml(learn_inner_lr=True),
    "maml_lslr": lambda: maml(plus=MAMLPlusPlusConfig(per_layer_per_step_lr=True)),
    "protonet": protonet,
}


@pytest.mark.parametrize("name", METHODS)
def test_graph_loss_gives_train_steps_gradient_and_figures(name):
    """What a replay computes (graph_loss, then backward) is what the method's eager step computes."""
    a = METHODS[name]().double()
    b = copy.deepcopy(a)
    batch = episodes(0)
    assert a.graph_supported(batch)
    stats = a.train_step(batch, torch.optim.SGD(a.parameters(), lr=0.0))  # lr 0: the gradient stays readable
    loss, accuracy = b.graph_loss(batch)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(stats["loss"], rel=1e-12)
    assert float(accuracy) == pytest.approx(stats["accuracy"], rel=1e-6)  # float32 means in another order
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), n
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, rtol=1e-9, atol=1e-12), n


@pytest.mark.parametrize("name", ["maml", "anil", "protonet"])
def test_graphed_steps_train_as_the_eager_steps_do(name):
    """Five Adam steps through GraphedSteps (EagerReplay) end at the eager run's weights, with the same
    logged figures, also when a batch of another shape runs eagerly in between (the gradients the
    replay writes must then be put back) and the schedule changes the learning rate."""
    eager = METHODS[name]().double()
    graphed = copy.deepcopy(eager)
    opt_e, opt_g = torch.optim.Adam(eager.parameters(), 1e-2), torch.optim.Adam(graphed.parameters(), 1e-2)
    sched_e, sched_g = (torch.optim.lr_scheduler.StepLR(o, 2, 0.5) for o in (opt_e, opt_g))
    steps = GraphedSteps(graphed, opt_g, contextlib.nullcontext, replay=EagerReplay)
    for k, batch in enumerate([episodes(1), episodes(2), episodes(3, queries=3), episodes(4), episodes(5)]):
        want = eager.train_step(batch, opt_e)
        got = steps.step(batch)
        if k == 2:
            assert got is None  # another shape: the caller's eager step
            got = graphed.train_step(batch, opt_g)
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-10)
        assert got["accuracy"] == pytest.approx(want["accuracy"], rel=1e-6)
        sched_e.step()
        sched_g.step()
    for (n, p), q in zip(eager.state_dict().items(), graphed.state_dict().values(), strict=True):
        assert torch.allclose(p.double(), q.double(), rtol=1e-9, atol=1e-12), n


def test_replay_reads_its_inputs_from_the_fixed_buffers():
    """Each step's batch is copied into the buffers the capture read: the replay never sees the first batch again."""
    m = protonet().double()
    steps = GraphedSteps(m, torch.optim.SGD(m.parameters(), lr=0.0), contextlib.nullcontext, replay=EagerReplay)
    first, second = episodes(1), episodes(2)
    steps.step(first)
    assert torch.equal(steps.static.query, first.query)
    fresh = copy.deepcopy(m)
    want = fresh.graph_loss(second)[0]
    assert steps.step(second)["loss"] == pytest.approx(float(want.detach()), rel=1e-12)
    assert torch.equal(steps.static.query, second.query)


@pytest.mark.parametrize("make", [
    lambda: MAML(Conv4(1, 8, "stride", bn_running_stats=False), 8, WAYS, 0.4, 1, 1, task_batching="split"),
    lambda: maml(plus=MAMLPlusPlusConfig(multi_step_loss=True)),
    lambda: maml(plus=MAMLPlusPlusConfig(first_order_until=10)),
    lambda: MAML(Conv4(1, 8, "stride"), 8, WAYS, 0.4, 1, 1, task_batching="auto"),  # running statistics
    lambda: Reptile(Conv4(1, 8, "stride"), 8, WAYS, 0.1, 2, 2, inner_batch=3),
], ids=["split_forced", "msl", "order_annealing", "running_bn", "reptile"])
def test_steps_that_cannot_be_captured_run_eagerly(make):
    m = make().double()
    steps = GraphedSteps(m, torch.optim.SGD(m.parameters(), lr=0.1), contextlib.nullcontext, replay=EagerReplay)
    assert steps.step(episodes(0)) is None
    assert steps.step(episodes(1)) is None and steps.replay is None


def test_maml_auto_batching_takes_vmap_when_captured():
    m = MAML(Conv4(1, 8, "stride", bn_running_stats=False), 8, WAYS, 0.4, 1, 1, task_batching="auto").double()
    GraphedSteps(m, torch.optim.SGD(m.parameters(), lr=0.1), contextlib.nullcontext,
                 replay=EagerReplay).step(episodes(0))
    assert int(m.batching_path) == 1 and int(m.meta_steps) == 1


# ------------------------------------------------------------------ the capture itself: CUDA only
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("name", ["maml", "metasgd", "protonet"])
def test_cuda_graph_replay_trains_as_the_eager_steps_do(name):
    """The real capture: five Adam steps by replay end near the eager run's weights (float32 on the GPU,
    so to a tolerance; cuDNN may pick other kernels inside a capture)."""
    eager = METHODS[name]().cuda()
    graphed = copy.deepcopy(eager)
    opt_e, opt_g = torch.optim.Adam(eager.parameters(), 1e-3), torch.optim.Adam(graphed.parameters(), 1e-3)
    steps = GraphedSteps(graphed, opt_g, contextlib.nullcontext, replay=Replay)
    for k in range(5):
        batch = episodes(k, tasks=8, queries=5, device="cuda", dtype=torch.float32)
        want, got = eager.train_step(batch, opt_e), steps.step(batch)
        assert got is not None
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
    assert isinstance(steps.replay, Replay)
    for (n, p), q in zip(eager.state_dict().items(), graphed.state_dict().values(), strict=True):
        assert torch.allclose(p.float(), q.float(), rtol=1e-3, atol=1e-5), n


@cuda
@pytest.mark.parametrize("method", ["maml", "protonet", "reptile"])
@pytest.mark.e2e
def test_training_with_cuda_graph_matches_eager_training(tmp_path, method):
    """The trainer end to end on the GPU: captured where the method allows (reptile never is), the same
    training curve as the eager run to float32 tolerance, and a graphed run stopped at step 10 and resumed
    (a fresh capture) carries on that curve."""
    import json

    from conftest import cli

    curves = {}
    for graph in ("false", "true"):
        r = cli("metalearn-train", f"method={method}", "debug=smoke", "hardware=cuda", f"hardware.cuda_graph={graph}",
                f"run_dir=run_{graph}", "test.episodes=20", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert ("captured as a CUDA graph" in r.stderr + r.stdout) == (graph == "true" and method != "reptile")
        lines = (tmp_path / f"run_{graph}" / "metrics.jsonl").read_text().splitlines()
        curves[graph] = [m["loss"] for m in map(json.loads, lines) if m["kind"] == "train"]
    assert curves["true"] == pytest.approx(curves["false"], rel=2e-2)
    if method == "reptile":
        return  # never captured, and its linear schedule is laid out over the planned steps (no extension)
    # stopped at step 10 and resumed to the smoke config's 20: a fresh capture carries on the same curve
    r = cli("metalearn-train", f"method={method}", "debug=smoke", "hardware=cuda", "hardware.cuda_graph=true",
            "run_dir=run_resumed", "test.episodes=20", "steps=10", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli("metalearn-train", "resume=true", "run_dir=run_resumed", "steps=20", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = (tmp_path / "run_resumed" / "metrics.jsonl").read_text().splitlines()
    resumed = [m["loss"] for m in map(json.loads, lines) if m["kind"] == "train"]
    assert resumed == pytest.approx(curves["true"], rel=2e-2)
