"""Checkpoints, written atomically (temporary file, fsync, rename)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from metalearn.data.cache import atomic_torch_save
from metalearn.errors import MetalearnError


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_torch_save(state, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MetalearnError(f"no checkpoint at {path}; the run never reached its first checkpoint "
                             f"(checkpoint_every steps), so there is nothing to resume or evaluate. Start it anew.")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise MetalearnError(f"checkpoint {path} cannot be read ({e}); use the other checkpoint "
                             f"(checkpoint=last / best) or retrain.") from None
