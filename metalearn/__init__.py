"""metalearn: few-shot meta-learning experiments from one command line."""

from __future__ import annotations

__version__ = "0.1.0"


def load_run(run, checkpoint: str = "best", device: str = "cpu"):
    """Load a finished run for use from Python (see metalearn.api). Imports torch on first use."""
    from metalearn.api import load_run as _load_run

    return _load_run(run, checkpoint, device)


__all__ = ["load_run", "__version__"]
