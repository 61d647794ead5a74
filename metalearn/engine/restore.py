"""A finished run's trained method, read back from its folder: the config it was trained with (completed with
the defaults of options added since) and its checkpoint's tensors, loaded as data only."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf

from metalearn.config import complete_saved_config
from metalearn.engine.checkpoint import load_checkpoint
from metalearn.engine.rundir import RunFolder
from metalearn.errors import MetalearnError
from metalearn.methods import Method, build_method

log = logging.getLogger("metalearn")


def restore_method(run: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu") -> tuple[Method, dict]:
    """The trained method of a run folder, in eval mode, and its checkpoint dict (with `checkpoint_name`: the
    checkpoint read, `best` falling back to `last` as RunFolder.weights says)."""
    folder = RunFolder(run, read_only=True)
    if not folder.is_run():
        raise MetalearnError(f"{run} is not a metalearn run folder (no config.yaml); give a folder under outputs/train/")
    path = folder.weights(checkpoint)
    ckpt = load_checkpoint(path)
    ckpt["checkpoint_name"] = path.stem
    ckpt["config"], filled = complete_saved_config(ckpt["config"])
    if filled:
        log.warning("%s was written by an older metalearn; options it predates take today's defaults: %s",
                    run, ", ".join(filled))
    cfg = OmegaConf.create(ckpt["config"])
    pre = ckpt["preprocess"]
    method = build_method(cfg.method, (pre["channels"], pre["image_size"], pre["image_size"]), cfg.sampler.train_ways,
                          train_classes=ckpt.get("train_classes"), shots=cfg.sampler.train_shots)
    method.load_state_dict(ckpt["method"])
    return method.to(device).eval(), ckpt
