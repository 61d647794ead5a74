"""The terminal and the log: one rich console, the `metalearn` logger's handlers, and whether this process
runs a console script. Every layer logs and draws progress, so this sits at the bottom of the house
(metalearn.cli, the console scripts' machinery, sets the flag; the engine only reads it)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

log = logging.getLogger("metalearn")
_in_console_script = False  # this process runs a console script (not the library from someone's Python)


@lru_cache(maxsize=1)
def console():
    """One rich console on stderr, shared by the progress bar and the log handler so lines never garble the bar."""
    from rich.console import Console

    return Console(stderr=True)


def in_console_script() -> bool:
    return _in_console_script


def set_console_script(on: bool) -> bool:
    """Mark (or unmark) this process as running a console script; returns the previous mark."""
    global _in_console_script
    before, _in_console_script = _in_console_script, on
    return before


def setup_logging(log_file: Path | None = None, quiet: bool = False) -> None:
    """quiet: warnings and errors only (the non-zero ranks of a distributed run)."""
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        log.addHandler(RichHandler(console=console(), show_path=False, show_level=False, markup=False))
    else:
        plain = logging.StreamHandler(sys.stderr)
        plain.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        log.addHandler(plain)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter("[%(asctime)s] %(message)s"))
        log.addHandler(fh)


@contextlib.contextmanager
def also_log_to(log_file: Path) -> Iterator[None]:
    """The log also goes to `log_file` while the block runs: a run's pre-training stage keeps its own train.log,
    a complete run folder like any other, while the run's train.log keeps the whole story."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(log_file)
    fh.setFormatter(logging.Formatter("[%(asctime)s] %(message)s"))
    log.addHandler(fh)
    try:
        yield
    finally:
        log.removeHandler(fh)
        fh.close()
