"""`logger=csv`: metrics.csv in the run folder, one row per record (training, validation, each test
setting), one column per quantity: the table a spreadsheet or pandas opens without parsing JSON lines."""

from __future__ import annotations

from dataclasses import dataclass

from metalearn.files import write_csv
from metalearn.loggers import RunInfo, Tracker, check_schema
from metalearn.registry import LOGGERS

FIRST = ["kind", "step", "time"]


@dataclass
class CSVSchema:
    file: str = "metrics.csv"  # in the run folder


class CSVTable(Tracker):
    def __init__(self, info: RunInfo, settings: CSVSchema):
        self.path = info.folder / settings.file
        self.rows: list[dict] = []
        if self.path.is_file():  # a resumed run: the rows before its checkpoint were written by its first part
            import csv

            with open(self.path, newline="") as f:
                self.rows = list(csv.DictReader(f))

    def _write(self) -> None:
        write_csv([{**{k: r[k] for k in FIRST if k in r}, **r} for r in self.rows], self.path)

    def log_metrics(self, record: dict) -> None:
        self.rows = [r for r in self.rows if not (r.get("kind") == record["kind"]
                                                  and float(r.get("step") or -1) >= record["step"])]
        self.rows.append(dict(record))
        self._write()

    def log_test(self, results: dict[str, dict]) -> None:
        for tag, r in results.items():
            self.rows.append({"kind": f"test_{tag}", **{k: v for k, v in r.items() if isinstance(v, int | float | str)}})
        self._write()


@LOGGERS.register("csv")
def build(settings: dict, info: RunInfo) -> CSVTable:
    return CSVTable(info, check_schema("csv", settings, CSVSchema))
