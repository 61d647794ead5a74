"""Small conventions: train.log keeps every line the progress bar replaces; each tool's --help is its own."""

from __future__ import annotations

import io
import logging
import re

from metalearn.engine import progress


def test_train_log_keeps_every_step_and_validation_line_under_a_progress_bar(tmp_path, monkeypatch):
    from rich.console import Console

    log = logging.getLogger("metalearn")
    saved = (list(log.handlers), log.level, log.propagate)
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(progress, "console", lambda: Console(file=io.StringIO(), force_terminal=True))
    fh = logging.FileHandler(tmp_path / "train.log")
    log.handlers, log.propagate = [fh], False
    log.setLevel(logging.INFO)  # setLevel, not `log.level =`: it clears the logger's cached isEnabledFor answers
    try:
        with progress.Progress(40, 0, "protonet on synthetic") as bar:
            assert bar.bar is not None  # the rich bar, as on a terminal
            for step in range(5, 45, 5):
                bar.update(step, {"loss": 1.0 / step, "accuracy": 0.5, "lr": 1e-3, "episodes_per_s": 10.0})
                if step % 20 == 0:
                    bar.note(f"step {step}: validation 90.00 ± 1.00%")
        fh.close()
    finally:
        log.handlers, log.propagate = saved[0], saved[2]
        log.setLevel(saved[1])
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert [int(m[1]) for line in lines if (m := re.search(r"step (\d+)/40 ", line))] == list(range(5, 45, 5))
    assert sum("validation" in line for line in lines) == 2


def test_eval_help_lists_evals_keys_not_trains_groups(capsys):
    from metalearn.help import answer_help

    assert answer_help("metalearn-eval", "eval", "intro", ["--help"])
    text = capsys.readouterr().out
    assert "Configuration groups" not in text and "method:" not in text
    assert "  episodes=600  " in text and "  checkpoint=best  " in text
    assert answer_help("metalearn-train", "train", "intro", ["--help"])
    text = capsys.readouterr().out
    assert "Configuration groups" in text and "logger: csv, many, mlflow, tensorboard, wandb" in text
