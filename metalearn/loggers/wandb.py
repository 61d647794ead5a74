"""`logger=wandb`: a Weights & Biases run, offline unless `logger.wandb.mode=online` (then `wandb login`
first). Offline runs are files under the run folder's wandb/, uploaded later with `wandb sync <that folder>`.
A sweep's jobs share a W&B group (the sweep's folder)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from metalearn.loggers import RunInfo, Tracker, check_schema, numbers, require
from metalearn.registry import LOGGERS

log = logging.getLogger("metalearn")


@dataclass
class WandbSchema:
    project: str = "metalearn"
    entity: str | None = None
    mode: str = "offline"  # offline | online | disabled
    checkpoints: bool = False  # also store checkpoints/ in the run's artifact


class Wandb(Tracker):
    def __init__(self, info: RunInfo, settings: WandbSchema):
        import wandb

        self.info, self.settings = info, settings
        self.run = wandb.init(project=settings.project, entity=settings.entity, mode=settings.mode,
                              dir=str(info.folder), name=info.name, group=info.group, tags=info.tags or None,
                              notes=info.notes or None, config=info.config, reinit="create_new",
                              # our log says what matters; no system-metrics sampler beside the training
                              settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))

    def log_metrics(self, record: dict) -> None:
        self.run.log({f"{record['kind']}/{k}": v for k, v in numbers(record).items()}, step=record["step"])

    def log_test(self, results: dict[str, dict]) -> None:
        for tag, r in results.items():
            for k in ("accuracy", "ci95"):
                self.run.summary[f"test/{tag}/{k}"] = float(r[k])

    def finish(self, status: str) -> None:
        import wandb

        artifact = wandb.Artifact(f"run-{self.run.id}", type="run-folder")
        for path in self.info.artifacts(self.settings.checkpoints):
            if path.is_dir():
                artifact.add_dir(str(path), name=path.name)
            else:
                artifact.add_file(str(path))
        self.run.log_artifact(artifact)
        self.run.summary["status"] = status
        where = self.run.settings.sync_dir
        self.run.finish(exit_code=0 if status == "completed" else 1)
        if self.settings.mode == "offline":
            log.info("W&B run stored offline in %s; upload it with: wandb sync %s", where, where)


@LOGGERS.register("wandb")
def build(settings: dict, info: RunInfo) -> Wandb:
    require("wandb", "wandb")
    s = check_schema("wandb", settings, WandbSchema)
    if s.mode not in ("offline", "online", "disabled"):
        from metalearn.errors import MetalearnError

        raise MetalearnError(f"logger.wandb.mode={s.mode!r} is not one of: offline, online, disabled")
    return Wandb(info, s)
