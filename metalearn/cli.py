"""What both console scripts share: logging to the console and the run folder, and
turning a MetalearnError into one clear message and exit status 2 (no traceback)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from metalearn.errors import MetalearnError

T = TypeVar("T")
log = logging.getLogger("metalearn")


def setup_logging(log_file: Path | None = None, quiet: bool = False) -> None:
    """quiet: warnings and errors only (the non-zero ranks of a distributed run)."""
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        from metalearn.engine.progress import console

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


def report_errors(fn: Callable[[], T], multirun: bool = False) -> T | None:
    """Run fn; a MetalearnError becomes `error: ...` on stderr and exit status 2.

    In a sweep the failed job is only logged (its summary says so), so the other jobs go on."""
    try:
        return fn()
    except MetalearnError as e:
        log.error("error: %s", e)
        if multirun:
            return None
        sys.exit(2)
