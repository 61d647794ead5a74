"""Shared fixtures: one dataset cache per test session, the real Omniglot archives, a CLI runner."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OMNIGLOT = Path(os.environ.get("METALEARN_OMNIGLOT", REPO.parent / "shared" / "data" / "omniglot"))


# Files whose every test runs the console scripts as a user would; other files mark such tests one by one.
# `pytest -m "not e2e"` is the quick loop of unit tests (one module at a time, in this process).
E2E_FILES = {"test_cli.py", "test_train.py", "test_bad_input.py", "test_faults.py", "test_install.py",
             "test_distributed.py", "test_report.py", "test_accuracy.py", "test_loggers.py", "test_cluster.py", "test_predict.py",
             "test_export.py", "test_tour.py"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if item.path.name in E2E_FILES:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory) -> Path:
    """Every test (and every CLI subprocess) shares one fresh cache folder, and an empty data home (where a
    dataset without dataset.root is looked for): nothing of the machine's own ~/.cache/metalearn is read."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["METALEARN_CACHE"] = str(path)
    os.environ["METALEARN_DATA"] = str(tmp_path_factory.mktemp("data_home"))
    return path


@pytest.fixture
def omniglot() -> Path:
    if not (OMNIGLOT / "images_background_small1.zip").is_file():
        pytest.skip(f"real Omniglot archives not found in {OMNIGLOT} (set METALEARN_OMNIGLOT)")
    return OMNIGLOT


def detached_plots() -> list[int]:
    """The processes drawing a learning curve after their metalearn-train exited (metalearn.engine.plots)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"metalearn.engine.plots" in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def wait_for_detached_plots(timeout: float = 120) -> None:
    """A console script leaves its learning curve to a detached process (`plots=auto`): a test reads or
    snapshots the run folder once that process is done too, as a user's next command would in practice."""
    end = time.monotonic() + timeout
    while detached_plots():
        if time.monotonic() > end:
            raise TimeoutError(f"learning-curve processes still running after {timeout} s: {detached_plots()}")
        time.sleep(0.05)


def cli(tool: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a console script as a user would; falls back to `python -m` when not on PATH."""
    exe = shutil.which(tool)
    cmd = [exe] if exe else [sys.executable, "-m", "metalearn." + tool.split("-")[1]]
    done = subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wait_for_detached_plots()
    return done


def smoke_train_then_eval(tmp_path: Path, name: str, extra: list[str], *eval_args: str) -> subprocess.CompletedProcess:
    """`debug=smoke` training of method `name` into tmp_path/run, then metalearn-eval of it on 10 episodes
    (both must succeed); returns the eval's result, whose stdout names the method and the task."""
    r = cli("metalearn-train", f"method={name}", "debug=smoke", "run_dir=run", "test.episodes=10", *extra, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    e = cli("metalearn-eval", "run=run", "episodes=10", *eval_args, cwd=tmp_path)
    assert e.returncode == 0, e.stderr[-2000:]
    return e


def tiny_method(name: str, width: int = 8, ways: int = 5, seed: int = 0):
    """Method `name` on a 16x16 grey input with a `width`-channel backbone, its weights from `seed`, in eval mode: the
    unit tests' small network (readouts, caches, indexes)."""
    import torch
    from omegaconf import OmegaConf

    from metalearn.config import SCHEMAS
    from metalearn.methods import build_method

    cfg = OmegaConf.structured(SCHEMAS["method"][name])
    cfg.name = name
    cfg.backbone.width = width
    torch.manual_seed(seed)
    return build_method(cfg, (1, 16, 16), ways=ways, train_classes=10).eval()


def compose(*overrides: str, config: str = "train"):
    """The config a CLI call with these overrides would get, composed in-process."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from metalearn.config import config_dir, register

    register()
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        return hydra_compose(config_name=config, overrides=list(overrides))


def predictions_with_support_shuffled(method, batch):
    """Task 0 of `batch` predicted from its support set as given and in a shuffled order: the two
    must agree for every method whose prediction is a function of the support *set*."""
    import torch

    perm = torch.randperm(batch.support.shape[1], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        given = method.predict(batch.support[0], batch.support_labels[0], batch.query[0], batch.ways)
        shuffled = method.predict(batch.support[0][perm], batch.support_labels[0][perm], batch.query[0], batch.ways)
    return given, shuffled


def run_main(tool: str, *args: str, cwd: Path) -> tuple[int, str]:
    """Call a console script's main() as the shell would; returns (exit status, stdout + stderr)."""
    from metalearn import eval as eval_cli
    from metalearn import export, predict, report, train

    main = {"metalearn-train": train.main, "metalearn-eval": eval_cli.main, "metalearn-report": report.main,
            "metalearn-predict": predict.main, "metalearn-export": export.main}[tool]
    import logging

    log = logging.getLogger("metalearn")
    saved_log = (list(log.handlers), log.propagate, log.level)
    old_argv, old_cwd = sys.argv, os.getcwd()
    out = io.StringIO()
    code: int | str | None = 0
    os.chdir(cwd)
    sys.argv = [tool, *args]
    try:
        with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
            if tool in ("metalearn-report", "metalearn-predict", "metalearn-export"):
                main(list(args))
            else:
                main()
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
        for h in list(log.handlers):  # the scripts point the logger at this call's stderr: put it back
            log.removeHandler(h)
            if h not in saved_log[0]:
                h.close()
        for h in saved_log[0]:
            log.addHandler(h)
        log.propagate, log.level = saved_log[1], saved_log[2]
    wait_for_detached_plots()
    return (code if isinstance(code, int) else 1), out.getvalue()
