"""Experiment trackers (logger=...): each read back from the tracker's own store, not mocked. One smoke
run logs to all four (logger=many); a two-job sweep logs to MLflow as one group."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest
from conftest import cli, run_main

from metalearn.errors import MetalearnError

TAGS = ["baseline", "ablation"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A smoke run logging to csv, tensorboard, mlflow and wandb at once, with tags and notes."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    cwd = tmp_path_factory.mktemp("trackers")
    r = cli("metalearn-train", "debug=smoke", "logger=many", f"tags=[{','.join(TAGS)}]", "notes=first try",
            "run_dir=run", cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return cwd / "run"


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def series(run: Path, kind: str, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in records(run) if r["kind"] == kind}


def test_metrics_jsonl_keeps_the_wall_time_of_each_record(run):
    times = [r["time"] for r in records(run)]
    assert times == sorted(times) and 1.7e9 < times[0] < 4e9  # seconds since the epoch, in order
    s = json.loads((run / "summary.json").read_text())
    assert s["tags"] == TAGS and s["notes"] == "first try"


def test_csv_table_holds_every_record_and_the_test(run):
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {int(r["step"]): float(r["loss"]) for r in rows if r["kind"] == "train"} == series(run, "train", "loss")
    assert {int(r["step"]): float(r["accuracy"]) for r in rows if r["kind"] == "val"} == series(run, "val", "accuracy")
    test = json.loads((run / "summary.json").read_text())["test"]["5w1s"]
    (row,) = [r for r in rows if r["kind"] == "test_5w1s"]
    assert float(row["accuracy"]) == test["accuracy"] and float(row["ci95"]) == test["ci95"]


def test_tensorboard_event_files_read_back(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert loss == pytest.approx(series(run, "train", "loss"), rel=1e-6)
    assert {e.step: e.value for e in acc.Scalars("val/accuracy")} == pytest.approx(series(run, "val", "accuracy"))
    test = json.loads((run / "summary.json").read_text())["test"]["5w1s"]
    assert acc.Scalars("test/5w1s/accuracy")[0].value == pytest.approx(test["accuracy"])
    assert acc.Scalars("test/5w1s/ci95")[0].value == pytest.approx(test["ci95"])
    assert "config" in "".join(acc.Tags()["tensors"])  # the resolved config as text


def test_mlflow_sqlite_store_reads_back(run):
    from mlflow.tracking import MlflowClient

    db = run.parent / "outputs" / "mlflow.db"
    assert db.is_file()  # the default backend store: a real database under outputs/
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    (r,) = client.search_runs([client.get_experiment_by_name("metalearn").experiment_id])
    assert r.info.run_name == "run" and r.info.status == "FINISHED"
    assert r.data.params["method.name"] == "protonet" and r.data.params["shots"] == "1"
    assert r.data.tags["metalearn.tags"] == ",".join(TAGS) and r.data.tags["mlflow.note.content"] == "first try"
    history = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "train/loss")}
    assert history == pytest.approx(series(run, "train", "loss"))
    test = json.loads((run / "summary.json").read_text())["test"]["5w1s"]
    assert r.data.metrics["test/5w1s/accuracy"] == pytest.approx(test["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"summary.json", "config.yaml", "metrics.jsonl", "learning_curve.png", "eval"} <= artifacts


def wandb_records(path: Path):
    """The records of a W&B offline run file (`run-<id>.wandb`): LevelDB's log format (32 KiB blocks of
    chunks, each a 7-byte header: CRC, length, type) after W&B's 7-byte header, each record a protobuf.
    wandb 0.31 ships no reader of its own in Python (its service, in Go, reads these)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        if kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or a record's last chunk
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_run_reads_back(run):
    (path,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    history, summary, tags, config_keys, artifacts = {}, {}, [], [], []
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            history[r.history.step.num if r.history.HasField("step") else row["_step"]] = row
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "run":
            tags, config_keys = list(r.run.tags), [i.key for i in r.run.config.update]
        elif kind == "artifact":
            artifacts = [m.path for m in r.artifact.manifest.contents]
    assert {s: row["train/loss"] for s, row in history.items()} == pytest.approx(series(run, "train", "loss"))
    assert {s: row["val/accuracy"] for s, row in history.items() if "val/accuracy" in row} == \
        pytest.approx(series(run, "val", "accuracy"))
    test = json.loads((run / "summary.json").read_text())["test"]["5w1s"]
    assert summary["test/5w1s/accuracy"] == pytest.approx(test["accuracy"]) and summary["status"] == "completed"
    assert tags == TAGS and {"method", "dataset", "sampler"} <= set(config_keys)
    assert {"summary.json", "metrics.jsonl", "eval/test_5w1s.json"} <= set(artifacts)


def test_a_sweep_logs_each_job_as_its_own_run_grouped_by_the_sweep(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    r = cli("metalearn-train", "-m", "debug=smoke", "steps=5", "val.every=0", "test.episodes=5", "logger=mlflow",
            "seed=0,1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("metalearn").experiment_id])
    assert sorted(x.data.params["seed"] for x in runs) == ["0", "1"]
    (sweep,) = {x.data.tags["metalearn.sweep"] for x in runs}  # one group: the sweep's folder
    assert sweep.startswith("outputs/multirun/")
    assert all(x.info.status == "FINISHED" for x in runs)


def test_a_tracker_that_is_not_installed_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    code, out = run_main("metalearn-train", "debug=smoke", "logger=mlflow", "run_dir=run", cwd=tmp_path)
    assert code == 2, out
    assert "logger=mlflow needs the mlflow package" in out and 'pip install -e ".[mlflow]"' in out


def test_a_trackers_unknown_key_is_one_clear_error(tmp_path):
    code, out = run_main("metalearn-train", "debug=smoke", "logger=csv", "+logger.csv.colour=red", "run_dir=run",
                         cwd=tmp_path)
    assert code == 2 and "logger.csv" in out and "colour" in out, out
    assert "Traceback" not in out


def test_a_failing_tracker_is_dropped_and_the_run_goes_on():
    from metalearn.loggers import Tracker, Trackers

    seen = []

    class Broken(Tracker):
        def log_metrics(self, record):
            raise ConnectionError("server gone")

    class Fine(Tracker):
        def log_metrics(self, record):
            seen.append(record["step"])

    t = Trackers({"broken": Broken(), "fine": Fine()})
    for step in (1, 2):
        t.log_metrics({"kind": "train", "step": step, "loss": 1.0})
    assert seen == [1, 2] and list(t.trackers) == ["fine"]


def test_unknown_tracker_is_refused_with_the_choices(tmp_path):
    code, out = run_main("metalearn-train", "debug=smoke", "logger=neptune", "run_dir=run", cwd=tmp_path)
    assert code == 2 and "neptune" in out and "tensorboard" in out, out


def test_require_names_the_package_and_the_extra():
    from metalearn.loggers import require

    with pytest.raises(MetalearnError, match=r'pip install -e "\.\[extra\]"'):
        require("surely_not_a_package_here", "thing", "extra")


def test_report_filters_runs_by_tag(run, tmp_path):
    code, out = run_main("metalearn-train", "debug=smoke", "steps=5", "val.every=0", "test.episodes=5", "run_dir=untagged",
                         cwd=tmp_path)
    assert code == 0, out
    code, out = run_main("metalearn-report", str(run), str(tmp_path / "untagged"), "--tags", "ablation",
                         "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert code == 0, out
    import csv as csv_module

    with open(tmp_path / "report" / "leaderboard.csv", newline="") as f:
        rows = list(csv_module.DictReader(f))
    assert [Path(r["run"]).name for r in rows] == ["run"] and rows[0]["tags"] == "baseline,ablation"
    assert "tags=" not in rows[0]["config"]  # tags name runs; they do not make a configuration of their own
    code, out = run_main("metalearn-report", str(tmp_path / "untagged"), "--tags", "ablation", "--out",
                         str(tmp_path / "r2"), cwd=tmp_path)
    assert code == 2 and "no run under" in out and "tags=[ablation]" in out
