"""metalearn.optimizers: torch's Adam and SGD without the torch._dynamo import (issue 36's start-up).

The classes must be torch.optim's to the bit (same parameters, same state, interchangeable state_dicts)
and must not import torch._dynamo: in a fresh process, through a whole smoke run and its evaluation."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import REPO

from metalearn import optimizers

CASES = [
    ("adam", dict(lr=1e-2, weight_decay=1e-3)),
    ("adam", dict(lr=1e-2, amsgrad=True, betas=(0.8, 0.95))),
    ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=1e-3)),
    ("sgd", dict(lr=0.1, momentum=0.9, dampening=0.9)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("sgd", dict(lr=0.1)),
]
TORCH = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
OURS = {"adam": optimizers.Adam, "sgd": optimizers.SGD}


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, first: int = 0) -> list[float]:
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    with warnings.catch_warnings():  # stepped ahead to where a resumed run's schedule stands
        warnings.simplefilter("ignore")
        for _ in range(first):
            schedule.step()
    losses = []
    for s in range(first, first + steps):
        g = torch.Generator().manual_seed(s)
        x, y = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        losses.append(opt.step(closure).item())
        schedule.step()
    return losses


def _same_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for name, value in a["state"][k].items():
            other = b["state"][k][name]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (k, name)


@pytest.mark.parametrize("name,kwargs", CASES)
def test_each_step_equals_torch_optims_to_the_bit(name, kwargs):
    ref, ours = _model(0), _model(0)
    ref_opt, our_opt = TORCH[name](ref.parameters(), **kwargs), OURS[name](ours.parameters(), **kwargs)
    assert isinstance(our_opt, TORCH[name])
    assert _train(ref, ref_opt, 5) == _train(ours, our_opt, 5)
    for p, q in zip(ref.parameters(), ours.parameters(), strict=True):
        assert torch.equal(p, q)
    _same_state(ref_opt.state_dict(), our_opt.state_dict())


@pytest.mark.parametrize("name,kwargs", CASES[::2])
def test_a_state_dict_moves_between_torch_and_ours_and_training_continues_the_same(name, kwargs):
    """Checkpoints written before this module (by torch.optim) resume under it, and the other way round."""
    ref, ours = _model(1), _model(1)
    ref_opt = TORCH[name](ref.parameters(), **kwargs)
    _train(ref, ref_opt, 3)
    ours.load_state_dict(ref.state_dict())
    our_opt = OURS[name](ours.parameters(), **kwargs)
    our_opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))  # as from a file: no shared tensors
    assert _train(ref, ref_opt, 3, first=3) == _train(ours, our_opt, 3, first=3)
    back = TORCH[name](ref.parameters(), **kwargs)
    back.load_state_dict(copy.deepcopy(our_opt.state_dict()))
    _same_state(back.state_dict(), our_opt.state_dict())


def test_a_step_leaves_gradients_as_it_found_them_and_adds_no_graph():
    model = _model(2)
    opt = optimizers.Adam(model.parameters(), lr=1e-2)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 6, dtype=torch.float64)),
                                      torch.tensor([0, 1, 2, 0])).backward()
    with torch.enable_grad():
        opt.step()
        assert torch.is_grad_enabled()
    assert all(p.grad_fn is None and p.is_leaf for p in model.parameters())
    with torch.no_grad():
        opt.step()
        assert not torch.is_grad_enabled()


PROGRAM = """
import sys, torch
from metalearn import optimizers
m = torch.nn.Linear(4, 2)
for opt in (optimizers.Adam(m.parameters(), lr=1e-3), optimizers.SGD(m.parameters(), lr=0.1, momentum=0.9)):
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    for _ in range(2):
        opt.zero_grad()
        m(torch.randn(3, 4)).sum().backward()
        opt.step()
        sched.step()
    opt.load_state_dict(opt.state_dict())
print("torch._dynamo" in sys.modules)
"""


def test_building_stepping_and_saving_never_import_torch_dynamo():
    r = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def _imports(args: list[str], cwd) -> str:
    r = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr


@pytest.mark.e2e
def test_a_smoke_run_and_its_evaluation_never_import_torch_dynamo(tmp_path):
    """The whole start-up path, as `metalearn-train debug=smoke` and `metalearn-eval` run it: a second
    import of ~1.1 s would show here before it shows in scripts/bench.py's ratio."""
    train = _imports(["-m", "metalearn.train", "debug=smoke", "run_dir=run", "plots=foreground"], tmp_path)
    assert "metalearn.optimizers" in train  # the run did go through the optimisers
    assert "torch._dynamo" not in train
    evaluation = _imports(["-m", "metalearn.eval", "run=run", "episodes=5"], tmp_path)
    assert "torch._dynamo" not in evaluation
