"""`logger=tensorboard`: TensorBoard event files in the run folder's tensorboard/ (or `logger.tensorboard.log_dir`).
`tensorboard --logdir outputs` then shows every run, a sweep's jobs side by side."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from metalearn.loggers import RunInfo, Tracker, check_schema, flat, numbers, require
from metalearn.registry import LOGGERS


@dataclass
class TensorBoardSchema:
    log_dir: str | None = None  # null: <run folder>/tensorboard


class TensorBoard(Tracker):
    def __init__(self, info: RunInfo, settings: TensorBoardSchema):
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        self.info = info
        self.writer = SummaryWriter(log_dir=str(Path(settings.log_dir) if settings.log_dir else info.folder / "tensorboard"))
        self.writer.add_text("config", "```\n" + yaml.safe_dump(info.config, sort_keys=False) + "```")
        if info.tags or info.notes:
            self.writer.add_text("tags", ", ".join(info.tags) + (f"\n\n{info.notes}" if info.notes else ""))
        self.final: dict[str, float] = {}

    def log_metrics(self, record: dict) -> None:
        for k, v in numbers(record).items():
            self.writer.add_scalar(f"{record['kind']}/{k}", v, record["step"], walltime=record.get("time"))
        self.writer.flush()

    def log_test(self, results: dict[str, dict]) -> None:
        for tag, r in results.items():
            for k in ("accuracy", "ci95"):
                self.writer.add_scalar(f"test/{tag}/{k}", float(r[k]), 0)
                self.final[f"test/{tag}/{k}"] = float(r[k])
        self.writer.flush()

    def finish(self, status: str) -> None:
        hparams = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in flat(self.info.config).items()}
        self.writer.add_hparams(hparams, self.final or {"status_completed": float(status == "completed")}, run_name=".")
        self.writer.close()


@LOGGERS.register("tensorboard")
def build(settings: dict, info: RunInfo) -> TensorBoard:
    require("tensorboard", "tensorboard")
    return TensorBoard(info, check_schema("tensorboard", settings, TensorBoardSchema))
