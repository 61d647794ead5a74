"""`logger=mlflow`: an MLflow run per metalearn run, in a real backend store: SQLite at outputs/mlflow.db
unless `logger.mlflow.tracking_uri` names another (a server's URL, another database). Browse it with

    mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db

A sweep's jobs are runs of the same experiment tagged with the sweep (`metalearn.sweep`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from metalearn.loggers import RunInfo, Tracker, check_schema, flat, numbers, require
from metalearn.registry import LOGGERS

STATUS = {"completed": "FINISHED", "interrupted": "KILLED"}  # anything else: FAILED


@dataclass
class MLflowSchema:
    tracking_uri: str | None = None  # null: sqlite:///<working directory>/outputs/mlflow.db
    experiment: str = "metalearn"
    checkpoints: bool = False  # also upload checkpoints/ as artifacts


def default_store() -> tuple[str, Path]:
    """The SQLite store and its artifact folder under outputs/ of the working directory."""
    outputs = Path.cwd() / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{outputs / 'mlflow.db'}", outputs / "mlflow-artifacts"


class MLflow(Tracker):
    def __init__(self, info: RunInfo, settings: MLflowSchema):
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        uri, artifacts = (settings.tracking_uri, None) if settings.tracking_uri else default_store()
        self.info, self.settings = info, settings
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(settings.experiment)
        if exp is None:
            location = (artifacts / settings.experiment).as_uri() if artifacts is not None else None
            try:
                exp_id = self.client.create_experiment(settings.experiment, artifact_location=location)
            except Exception:  # another job of the sweep created it first
                exp_id = self.client.get_experiment_by_name(settings.experiment).experiment_id
        else:
            exp_id = exp.experiment_id
        tags = {"metalearn.folder": str(info.folder), **{f"tag.{t}": "true" for t in info.tags}}
        if info.group:
            tags["metalearn.sweep"] = info.group
        if info.notes:
            tags["mlflow.note.content"] = info.notes
        self.run_id = self.client.create_run(exp_id, run_name=info.name, tags=tags).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flat(info.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_batch(self.run_id, tags=[RunTag("metalearn.tags", ",".join(info.tags))])

    def _log(self, values: dict[str, float], step: int, when: float | None = None) -> None:
        from mlflow.entities import Metric

        ms = int(1000 * (when or time.time()))
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ms, step) for k, v in values.items()])

    def log_metrics(self, record: dict) -> None:
        self._log({f"{record['kind']}/{k}": v for k, v in numbers(record).items()}, record["step"], record.get("time"))

    def log_test(self, results: dict[str, dict]) -> None:
        self._log({f"test/{tag}/{k}": float(r[k]) for tag, r in results.items() for k in ("accuracy", "ci95")}, 0)

    def finish(self, status: str) -> None:
        for path in self.info.artifacts(self.settings.checkpoints):
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status=STATUS.get(status, "FAILED"))


@LOGGERS.register("mlflow")
def build(settings: dict, info: RunInfo) -> MLflow:
    require("mlflow", "mlflow")
    return MLflow(info, check_schema("mlflow", settings, MLflowSchema))
