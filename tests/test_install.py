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


BLOCK_EXTRAS = '''
import sys
BLOCKED = {"optuna", "matplotlib"}  # what the extras [search] and [plots] install


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
'''


def test_the_core_install_trains_and_names_the_extra_a_command_needs(tmp_path):
    """Without the extras (optuna and matplotlib hidden, as after `pip install .`): a run trains, tests and records
    without its plot, saying so in one line; a search is refused in one line naming `.[search]`."""
    from conftest import cli

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_EXTRAS)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(site) + (os.pathsep + old if old else "")
    try:
        r = cli("metalearn-train", "debug=smoke", "test.episodes=5", "run_dir=run", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        assert 'learning_curve.png not drawn: matplotlib is not installed (pip install -e ".[plots]")' in r.stderr
        assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
        assert not (tmp_path / "run" / "learning_curve.png").exists()
        r = cli("metalearn-train", "-m", "search=metric", "debug=smoke", cwd=tmp_path)
        errors = [line for line in r.stderr.splitlines() if "error:" in line]
        assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert 'search=metric needs the optuna package, which is not installed; install it with pip install -e ".[search]"' \
            in errors[0]
        r = cli("metalearn-report", "run", "--out", "report", cwd=tmp_path)
        assert r.returncode == 0 and "matplotlib is not installed" in r.stderr, r.stderr[-2000:]
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old


def test_no_dependency_pins_optuna_or_sqlalchemy_below_their_current_majors():
    """Installing metalearn into an environment with Optuna 5 and SQLAlchemy 2 keeps them (the 2021 pins are gone)."""
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on
    from packaging.requirements import Requirement

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in meta["dependencies"] + sum(meta["optional-dependencies"].values(), [])]
    names = {r.name.lower() for r in reqs}
    assert "hydra-optuna-sweeper" not in names and "optuna" not in {r.name for r in map(Requirement, meta["dependencies"])}
    for r in reqs:
        if r.name.lower() in ("optuna", "sqlalchemy", "alembic"):
            assert r.specifier.contains("5.1.0" if r.name == "optuna" else "2.1.0", prereleases=True), r
