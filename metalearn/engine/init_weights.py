"""Initialise a run's method from another run's weights.

Why: pre-train-then-meta-train recipes (a Baseline++ backbone under Matching
Networks, as Chen et al. 2021's Meta-Baseline) and curricula (5-way, then
20-way) need a run to start where another ended, with a fresh optimiser,
schedule and step count. Only tensors with the same name and shape are
copied; a shape clash is an error, never a silent skip, because it means the
two runs' architectures differ.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from metalearn.engine.checkpoint import load_checkpoint
from metalearn.engine.rundir import RunFolder
from metalearn.errors import MetalearnError

log = logging.getLogger("metalearn")


def checkpoint_path(run: str | Path, checkpoint: str = "best") -> Path:
    """The checkpoint file that `run` (a run folder or a .pt file) names."""
    path = Path(run).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise MetalearnError(f"init.run={str(run)!r} does not exist; give a finished run's folder "
                             f"(outputs/train/<date>/<time>_...) or its checkpoints/best.pt")
    if checkpoint not in ("best", "last"):
        raise MetalearnError(f"init.checkpoint={checkpoint!r} is not one of: best, last")
    file = RunFolder(path, read_only=True).weights(checkpoint)
    if not file.is_file():
        raise MetalearnError(f"init.run={str(run)!r} holds no checkpoint ({file} is missing); is it a metalearn "
                             f"run folder that reached its first checkpoint?")
    return file


def _selected(name: str, prefixes: list[str]) -> bool:
    return not prefixes or any(name == p or name.startswith(p + ".") for p in prefixes)


def parse_rename(items: list[str]) -> dict[str, str]:
    """init.rename's "old:new" strings as a mapping of name prefixes."""
    pairs = [item.split(":") for item in items]
    bad = [item for item, pair in zip(items, pairs, strict=True) if len(pair) != 2 or not all(pair)]
    if bad:
        raise MetalearnError(f"init.rename takes source:target prefix pairs, e.g. init.rename=[backbone:encoder]; "
                             f"got {bad}")
    return dict(pairs)


def _renamed(name: str, rename: dict[str, str]) -> str:
    for old, new in rename.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    return name


def initialize_from(method: torch.nn.Module, run: str | Path, checkpoint: str = "best",
                    only: list[str] | None = None, rename: dict[str, str] | None = None) -> dict[str, Any]:
    """Copy the source run's tensors that `only` selects (all, when empty) and `method` also has, under
    the names `rename` maps their prefixes to (a Baseline++ `backbone` into MANN's `encoder`); returns what
    was done, for summary.json."""
    prefixes, rename = list(only or []), dict(rename or {})
    file = checkpoint_path(run, checkpoint)
    checkpointed: dict[str, torch.Tensor] = load_checkpoint(file)["method"]
    for p in [*prefixes, *rename]:
        if not any(_selected(k, [p]) for k in checkpointed):
            raise MetalearnError(f"init.only / init.rename: no tensor of {file} is named {p!r} or {p}.*; its "
                                 f"top-level names are: {', '.join(_tops(checkpointed))}")
    source = {_renamed(k, rename): (k, v) for k, v in checkpointed.items() if _selected(k, prefixes)}
    target = method.state_dict()
    shared = [k for k in source if k in target]
    clashes = [f"{k} {tuple(source[k][1].shape)} vs {tuple(target[k].shape)}" for k in shared
               if source[k][1].shape != target[k].shape]
    if clashes:
        raise MetalearnError(f"init.run: {len(clashes)} tensor(s) of {file} differ in shape from this run's "
                             f"method (checkpoint vs this run): {'; '.join(clashes[:4])}. Use the same backbone "
                             f"(method.backbone.name / .width) or limit init.only to the parts that match.")
    if not shared:
        raise MetalearnError(f"init.run: {file} and this run's method share no tensor names"
                             f"{' under ' + ', '.join(prefixes) if prefixes else ''}; the checkpoint has "
                             f"{', '.join(_tops(checkpointed))}, this method {', '.join(_tops(target))} "
                             f"(init.rename maps one prefix to another, e.g. init.rename=[backbone:encoder])")
    with torch.no_grad():
        for k in shared:
            target[k].copy_(source[k][1])
    copied = {source[k][0] for k in shared}
    fresh = [k for k in target if k not in shared]
    unused = [k for k in checkpointed if k not in copied]
    log.info("initialised %d of %d tensors from %s%s", len(shared), len(target), file,
             f"; fresh: {', '.join(sorted({k.rsplit('.', 1)[0] for k in fresh}))}" if fresh else "")
    return {"from": str(file), "tensors": len(shared), "fresh": fresh, "unused": unused}


def _tops(state: dict[str, torch.Tensor]) -> list[str]:
    return sorted({k.split(".")[0] for k in state})
