"""The README's quick tour, command by command, on a fresh working folder: each training in its smoke form
(`debug=smoke` added; a resumed run trains 20 steps further instead of to the tour's step count), the other
commands exactly as written. A tour command that fails fails here."""

import re
import shlex
from pathlib import Path

from conftest import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def tour_commands() -> list[list[str]]:
    text = README.read_text()
    section = text.split("## A quick tour", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.split("#", 1)[0].strip()]


def smoke_form(argv: list[str]) -> list[str]:
    if argv[0] != "metalearn-train" or "--help" in argv:
        return argv
    if "resume=true" in argv:  # a resumed run is its saved (smoke) config: train it 20 steps further
        return [re.sub(r"^steps=\d+$", "steps=40", a) for a in argv]
    return [*argv, "debug=smoke"]  # after the -m flag too: metalearn-train takes flags anywhere


def test_the_readme_tour_runs_top_to_bottom(tmp_path):
    commands = tour_commands()
    assert len(commands) >= 6 and commands[0][0] == "metalearn-train"
    for argv in commands:
        argv = smoke_form(argv)
        r = cli(argv[0], *argv[1:], cwd=tmp_path, timeout=600)
        assert r.returncode == 0, f"{shlex.join(argv)}\n{r.stderr[-2000:]}"
    assert (tmp_path / "outputs" / "report" / "leaderboard.md").is_file()
    summaries = list((tmp_path / "outputs").rglob("summary.json"))
    assert len(summaries) >= 6  # first, maml5, and the sweep's four jobs
