"""Pre-train, then meta-learn: a run whose config names a pre-training stage (`pretrain.experiment`, a preset
of its own) first runs that preset in <run>/pretrain/, a complete run folder, then trains itself starting from
its weights (init.run pointed there, init.only choosing which).

Why one command and not two: the recipe is the method (Meta-Baseline is classifier pre-training *then*
episodic training), so its run folder should hold both stages, resume at either, and be reproduced by the
one line that made it. Resuming a run whose stage finished skips it; a stage cut short resumes from its own
last checkpoint. The stage reads the same dataset as the run (only which training-class copies it adds,
rotations or reflections, may differ), so pre-training can never see the run's test classes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from metalearn.config import data_difference
from metalearn.engine.rundir import RunFolder
from metalearn.errors import MetalearnError

log = logging.getLogger("metalearn")
STAGE_DIR = "pretrain"
# command-line overrides that reach the stage too: which data and where, the hardware, the seed, smoke sizes,
# and the backbone, whose weights the stage hands on (another width would fail only after the whole stage)
FORWARDED = ("dataset", "hardware", "seed", "debug", "max_minutes", "method.backbone")
# dataset keys the stage may set differently: they add transformed copies of a split's own classes
STAGE_MAY_DIFFER = ("rotations", "reflections")


def stage_folder(run: Path, read_only: bool = True) -> RunFolder:
    """The stage's folder inside the run's; resuming it means resuming the run."""
    return RunFolder(run / STAGE_DIR, read_only=read_only, resume_dir=run)


def forwarded(overrides: list[str]) -> list[str]:
    """The overrides of the run's command line that also apply to its pre-training stage."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~").startswith(FORWARDED)]


def compose_stage(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, list[str]]:
    """The stage's config: its preset, the forwarded overrides, then pretrain.overrides."""
    from hydra import compose

    stage_overrides = [f"experiment={cfg.pretrain.experiment}", *forwarded(overrides), *cfg.pretrain.overrides]
    try:
        stage = compose(config_name="train", overrides=stage_overrides)
    except Exception as e:  # Hydra's own message names the missing preset or the bad override
        raise MetalearnError(f"pretrain.experiment={cfg.pretrain.experiment} with overrides {stage_overrides[1:]}: "
                             f"{' '.join(str(e).split())[:400]}. It must name a preset of configs/experiment/.") from None
    if stage.get("pretrain", {}).get("experiment"):
        raise MetalearnError(f"pretrain.experiment={cfg.pretrain.experiment} names a preset with a pre-training "
                             f"stage of its own ({stage.pretrain.experiment}); a stage cannot have stages")
    check_same_data(cfg, stage)
    stage.resume, stage.run_dir = False, None
    return stage, stage_overrides


def check_same_data(cfg: DictConfig, stage: DictConfig) -> None:
    """Refuse a stage that reads other data than the run: its training classes could be the run's test classes."""
    own, theirs = (OmegaConf.to_container(c.dataset, resolve=True) for c in (cfg, stage))
    difference = data_difference(own, theirs, STAGE_MAY_DIFFER)
    if difference:
        raise MetalearnError(f"the pre-training stage ({cfg.pretrain.experiment}) reads other data than this run: "
                             f"{difference}. Both stages must use the same dataset and split, so pre-training never "
                             f"sees this run's test classes; set them alike (pretrain.overrides=[...]).")
