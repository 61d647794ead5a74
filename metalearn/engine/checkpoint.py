"""Checkpoints, written atomically (temporary file, fsync, rename) and read back as data only.

Why data only: run folders are shared and downloaded, and a pickle can run any code when it is
loaded. `torch.load(weights_only=True)` rebuilds tensors, numbers, strings, lists and dicts and
refuses everything else, which is all a checkpoint of ours holds.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from metalearn.data.cache import atomic_torch_save
from metalearn.errors import MetalearnError


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_torch_save(state, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise MetalearnError(f"{path} is a folder, not a checkpoint file; give the run folder (init.run=RUN) or a "
                             f".pt file inside its checkpoints/")
    if not path.is_file():
        raise MetalearnError(f"no checkpoint at {path}; the run never reached its first checkpoint "
                             f"(checkpoint_every steps), so there is nothing to resume or evaluate. Start it anew.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"it names {found.group(1)}" if found else type(e).__name__
        raise MetalearnError(f"checkpoint {path} holds more than tensors and plain data, and loading it could run "
                             f"code, so it is refused ({what}). Use a checkpoint written by metalearn; "
                             f"never load one from a source you do not trust.") from None
    except Exception as e:
        raise MetalearnError(f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:200]}); use the other "
                             f"checkpoint (checkpoint=last / best) or retrain.") from None
    if not isinstance(ckpt, dict) or "method" not in ckpt:
        raise MetalearnError(f"{path} is not a metalearn checkpoint (no 'method' weights in it); give a checkpoint "
                             f"from a run's checkpoints/ folder")
    return ckpt
