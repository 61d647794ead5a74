"""A trained classifier as the teacher of a new one (born-again distillation, Furlanello et al. 2018, as
Tian et al. 2020's RFS applies it to few-shot pre-training): `method.teacher=<a baseline run folder>`.

Why a run folder and not a checkpoint file: the folder's config says which data the teacher learnt, and its
logits are only a target if its classes are this run's training classes in the same order, so the teacher's
dataset must be this run's (paths aside) and its head as wide as this run's. The teacher is restored like any
run (tensors only, no unpickling; the engine hands the reader in, TrainingContext.restore), frozen, in eval
mode, and never saved into the student's checkpoints: a resumed run reloads it from the folder its config names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from metalearn.config import WHERE_KEYS, data_difference
from metalearn.errors import MetalearnError
from metalearn.methods.base import TrainingContext


def check_distillation_settings(method: Any, defaults: Any) -> None:
    """Refuse distillation settings given without a teacher: they would be ignored, and a run the user believes
    distilled would be a plain one. `defaults`: the schema whose defaults mean 'not given'."""
    if "distill_weight" not in method or method.get("teacher"):
        return
    given = [f"method.{k}={method[k]}" for k in ("distill_weight", "distill_temperature")
             if method[k] != getattr(defaults, k)]
    if given:
        raise MetalearnError(f"{', '.join(given)} without method.teacher: distillation needs a teacher, so the setting "
                             f"would be ignored; add method.teacher=<a baseline run folder> or drop {given[0].split('=')[0]}")


def load_teacher(teacher_run: str, ctx: TrainingContext, train_classes: int, kind: type) -> nn.Module:
    """The run `teacher_run` names, checked to be a `kind` (a Baseline) that learnt this run's training classes,
    in the student's memory format (its forward pass runs every step beside the student's)."""
    path = Path(str(teacher_run)).expanduser()
    if ctx.restore is None:
        raise MetalearnError("method.teacher needs a run reader (TrainingContext.restore); the engine passes one")
    try:
        teacher, ckpt = ctx.restore(path)
    except MetalearnError as e:
        raise MetalearnError(f"method.teacher={teacher_run}: no run folder there ({e}); give the folder of a finished "
                             f"baseline or baselinepp run, e.g. outputs/train/<run>/pretrain") from None
    if not isinstance(teacher, kind):
        raise MetalearnError(f"method.teacher={teacher_run} is a {ckpt['config']['method']['name']} run; a "
                             f"teacher must be a baseline or baselinepp run (a classifier over the training classes)")
    difference = data_difference(ctx.dataset, ckpt["config"]["dataset"], WHERE_KEYS)
    if difference:
        raise MetalearnError(f"method.teacher={teacher_run} learnt other data: {difference}; its logits are a "
                             f"target only over this run's training classes, so train it on the same data")
    if teacher.weight.shape[0] != train_classes:
        raise MetalearnError(f"method.teacher={teacher_run} classifies {teacher.weight.shape[0]} classes, this "
                             f"run's training split has {train_classes}; train the teacher on the same data")
    for m in teacher.modules():
        if hasattr(m, "channels_last"):
            m.channels_last = ctx.channels_last
    return teacher
