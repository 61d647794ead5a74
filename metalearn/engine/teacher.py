"""A trained classifier as the teacher of a new one (born-again distillation, Furlanello et al. 2018, as
Tian et al. 2020's RFS applies it to few-shot pre-training): `method.teacher=<a baseline run folder>`.

Why a run folder and not a checkpoint file: the folder's config says which data the teacher learnt, and its
logits are only a target if its classes are this run's training classes in the same order, so the teacher's
dataset must be this run's (paths aside) and its head as wide as this run's. The teacher is restored like any
run (tensors only, no unpickling), frozen, in eval mode, and never saved into the student's checkpoints: a
resumed run reloads it from the folder its config names.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from metalearn.engine.stages import data_difference
from metalearn.errors import MetalearnError

# dataset keys that say where the files are, not which classes: they may differ between teacher and student
WHERE_KEYS = ("root", "cache_dir", "download", "check_md5")


def check_distillation_settings(method: DictConfig) -> None:
    """Refuse distillation settings given without a teacher: they would be ignored, and a run the user believes
    distilled would be a plain one."""
    from metalearn.config import BaselineConfig

    if "distill_weight" not in method or method.get("teacher"):
        return
    given = [f"method.{k}={method[k]}" for k in ("distill_weight", "distill_temperature")
             if method[k] != getattr(BaselineConfig, k)]
    if given:
        raise MetalearnError(f"{', '.join(given)} without method.teacher: distillation needs a teacher, so the setting "
                             f"would be ignored; add method.teacher=<a baseline run folder> or drop {given[0].split('=')[0]}")


def load_teacher(cfg: DictConfig, train_classes: int, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """The run `cfg.method.teacher` names, checked to have learnt this run's training classes, in the student's
    memory format (its forward pass runs every step beside the student's)."""
    from metalearn.api import restore_method
    from metalearn.methods.baseline import Baseline

    path = Path(str(cfg.method.teacher)).expanduser()
    if not (path / "config.yaml").is_file():
        raise MetalearnError(f"method.teacher={cfg.method.teacher}: no run folder there (no config.yaml); give the "
                             f"folder of a finished baseline or baselinepp run, e.g. outputs/train/<run>/pretrain")
    teacher, ckpt = restore_method(path, "last", device)
    if not isinstance(teacher, Baseline):
        raise MetalearnError(f"method.teacher={cfg.method.teacher} is a {ckpt['config']['method']['name']} run; a "
                             f"teacher must be a baseline or baselinepp run (a classifier over the training classes)")
    difference = data_difference(OmegaConf.to_container(cfg.dataset, resolve=True), ckpt["config"]["dataset"],
                                 WHERE_KEYS)
    if difference:
        raise MetalearnError(f"method.teacher={cfg.method.teacher} learnt other data: {difference}; its logits are a "
                             f"target only over this run's training classes, so train it on the same data")
    if teacher.weight.shape[0] != train_classes:
        raise MetalearnError(f"method.teacher={cfg.method.teacher} classifies {teacher.weight.shape[0]} classes, this "
                             f"run's training split has {train_classes}; train the teacher on the same data")
    for m in teacher.modules():
        if hasattr(m, "channels_last"):
            m.channels_last = channels_last
    return teacher
