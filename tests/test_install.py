"""Configs are found from an installed wheel run in any directory, not only from a checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

from conftest import REPO


def test_configs_found_from_the_checkout():
    from metalearn.config import config_dir

    assert (Path(config_dir()) / "train.yaml").is_file()


def test_wheel_installs_and_runs_in_any_directory(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    wheel = next(dist.glob("metalearn-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # torch etc. come from the interpreter running this test, wherever it keeps them (a virtual environment's
    # site-packages, the base interpreter's, or both): listed in a .pth of the new environment, after its own
    # site-packages, so the wheel installed there is the metalearn found. (system_site_packages=True would
    # give the base interpreter's packages, not those of a virtual environment running the tests.)
    host = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "host_packages.pth").write_text("".join(p + "\n" for p in host))
    inst = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], capture_output=True, text=True,
                          timeout=600)
    assert inst.returncode == 0, inst.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(py), "-c", "import metalearn.config as c; print(c.__file__); print(c.config_dir())"],
                           cwd=elsewhere, capture_output=True, text=True, env=env)
    module, configs = where.stdout.split()
    assert module.startswith(str(env_dir)) and configs.startswith(str(env_dir)), where.stdout
    train = shutil.which("metalearn-train", path=str(env_dir / "bin"))
    r = subprocess.run([train, "debug=smoke", "run_dir=run"], cwd=elsewhere, capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads((elsewhere / "run" / "summary.json").read_text())["status"] == "completed"
