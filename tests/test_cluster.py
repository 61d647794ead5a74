"""Launching on a cluster: the SLURM launcher's config composes, and without its plugin the error names the extra."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import cli, run_main


def test_slurm_launcher_config_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    r = cli("metalearn-train", "--cfg", "hydra", "launcher=slurm", "hydra.launcher.partition=gpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in r.stdout
    assert "partition: gpu" in r.stdout and "timeout_min: 240" in r.stdout


def test_slurm_without_its_plugin_names_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins.hydra_submitit") else real(name, *a))
    code, out = run_main("metalearn-train", "-m", "launcher=slurm", "seed=0,1", cwd=tmp_path)
    assert code == 2, out
    assert "launcher=slurm needs the hydra-submitit-launcher package" in out and 'pip install -e ".[slurm]"' in out
    assert "Traceback" not in out
