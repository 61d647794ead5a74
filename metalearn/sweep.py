"""At the end of a `--multirun` sweep, collect every job's summary.json into summary.csv."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from metalearn.files import write_csv


def collect(sweep_dir: Path) -> list[dict]:
    rows = []
    for job in sorted(sweep_dir.iterdir(), key=lambda p: p.name):
        if not job.is_dir():
            continue
        path = job / "summary.json"
        s = json.loads(path.read_text()) if path.exists() else {"status": "no summary"}
        row = {"job": job.name, "status": s.get("status"), "method": s.get("method"), "dataset": s.get("dataset"),
               "overrides": " ".join(s.get("overrides", [])), "seed": s.get("seed"),
               "best_val": (s.get("best_val") or {}).get("accuracy"), "wall_time_s": s.get("wall_time_s")}
        for tag, t in (s.get("test") or {}).items():
            row[f"test_{tag}"], row[f"test_{tag}_ci95"] = t["accuracy"], t["ci95"]
        rows.append(row)
    return rows


def print_table(sweep_dir: Path) -> None:
    """Every job's test accuracy, and each configuration's mean across seeds, as a rich table."""
    from rich.console import Console
    from rich.table import Table

    from metalearn.report import across_seeds, find_runs, load_results

    results = [r for run in find_runs([sweep_dir]) for r in load_results(run)]
    table = Table(title=f"sweep {sweep_dir}")
    for col in ("job", "method", "task", "seed", "status", "test accuracy (95% CI)"):
        table.add_column(col)
    for r in results:
        acc = "—" if r.accuracy != r.accuracy else f"{100 * r.accuracy:.2f} ± {100 * r.ci95:.2f}%"
        table.add_row(r.run.name, r.method, r.tag, str(r.seed), r.status, acc)
    tested = {r.run.name for r in results}
    for row in collect(sweep_dir):  # failed jobs have no test result, but a row all the same
        if row["job"] not in tested:
            table.add_row(row["job"], row["method"] or "—", "—", str(row["seed"]), str(row["status"]), "—")
    console = Console()
    console.print(table)
    best = sweep_dir / "optimization_results.yaml"
    if best.is_file():  # an Optuna search (search=<family>)
        console.print(f"search: best validation accuracy and parameters in {best}:\n{best.read_text()}")
    for s in across_seeds(results):
        if s["seeds"] > 1:
            console.print(f"{s['method']} {s['task']} [{s['config']}]: {100 * s['mean_accuracy']:.2f} ± "
                          f"{100 * s['ci95_across_seeds']:.2f}% over {s['seeds']} seeds")


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            rows = collect(sweep_dir)
            write_csv(rows, sweep_dir / "summary.csv")
            print_table(sweep_dir)
            print(f"sweep summary ({len(rows)} jobs): {sweep_dir / 'summary.csv'}")
