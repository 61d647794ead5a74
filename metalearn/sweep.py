"""At the end of a `--multirun` sweep, collect every job's summary.json into summary.csv."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from metalearn.engine.rundir import SUMMARY
from metalearn.files import write_csv


def collect(sweep_dir: Path) -> list[dict]:
    rows = []
    for job in sorted(sweep_dir.iterdir(), key=lambda p: p.name):
        if not job.is_dir():
            continue
        path = job / SUMMARY
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
    from rich.markup import escape
    from rich.table import Table

    from metalearn.report import across_seeds, find_runs, load_results

    results = [r for run in find_runs([sweep_dir]) for r in load_results(run)]
    console = Console()
    best = sweep_dir / "optimization_results.yaml"
    if best.is_file():  # an Optuna search (search=<family>): selection on validation, never on test
        print_search(sweep_dir, best, console)
        return
    table = Table(title=f"sweep {sweep_dir}")
    for col in ("job", "method", "task", "seed", "status", "test accuracy (95% CI)"):
        table.add_column(escape(col), overflow="fold")
    for r in results:
        acc = "—" if r.accuracy != r.accuracy else f"{100 * r.accuracy:.2f} ± {100 * r.ci95:.2f}%"
        table.add_row(escape(r.run.name), r.method, r.tag, str(r.seed), r.status, acc)
    tested = {r.run.name for r in results}
    for row in collect(sweep_dir):  # failed jobs have no test result, but a row all the same
        if row["job"] not in tested:
            table.add_row(escape(row["job"]), row["method"] or "—", "—", str(row["seed"]), str(row["status"]), "—")
    console.print(table)
    for s in across_seeds(results):  # escaped: a config's [brackets] are text, not rich markup
        if s["seeds"] > 1:
            console.print(escape(f"{s['method']} {s['task']} [{s['config']}]: {100 * s['mean_accuracy']:.2f} ± "
                                 f"{100 * s['ci95_across_seeds']:.2f}% over k={s['seeds']} seeds "
                                 f"(Student's t, {s['seeds'] - 1} df)"))
        elif s["runs"] > 1:
            console.print(escape(f"{s['method']} {s['task']} [{s['config']}]: {s['runs']} runs of one seed, "
                                 f"{s['repeats_reproduced']} ({100 * s['mean_accuracy']:.2f}%)"))


def print_search(sweep_dir: Path, best: Path, console) -> None:
    """A search's trials by the objective it maximised (best validation accuracy) with their parameters; the
    test accuracy of the chosen trial alone, marked as such, since choosing by test would overstate it."""
    from omegaconf import OmegaConf
    from rich.markup import escape
    from rich.table import Table

    rows = collect(sweep_dir)
    chosen = OmegaConf.load(best)
    searched = set(chosen.get("best_params", {}))

    def shown(overrides: str) -> str:  # the searched parameters only, numbers to 4 significant digits
        pairs = [o.split("=", 1) for o in overrides.split() if o.split("=", 1)[0] in searched]
        return " ".join(f"{k}={_short(v)}" for k, v in pairs)

    table = Table(title=f"search {sweep_dir}: trials by validation accuracy (the objective)")
    for col in ("trial", "status", "validation accuracy (objective)", "parameters"):
        table.add_column(col, overflow="fold")
    ranked = sorted(rows, key=lambda r: -(r["best_val"] if r["best_val"] is not None else -1.0))
    for r in ranked:
        val = "—" if r["best_val"] is None else f"{100 * r['best_val']:.2f}%"
        table.add_row(escape(r["job"].split("_", 1)[0]), str(r["status"]), val, escape(shown(r["overrides"])))
    console.print(table)
    params = " ".join(f"{k}={_short(v)}" for k, v in chosen.get("best_params", {}).items())
    console.print(escape(f"chosen by validation accuracy {100 * float(chosen.best_value):.2f}%: {params}"))
    top = ranked[0] if ranked and ranked[0]["best_val"] is not None else None
    tests = {k: v for k, v in (top or {}).items() if k.startswith("test_") and not k.endswith("_ci95")}
    for key, acc in tests.items():
        console.print(f"test accuracy of the chosen trial only ({key[5:]}, not used for selection): "
                      f"{100 * acc:.2f} ± {100 * top[key + '_ci95']:.2f}%")


def _short(value) -> str:
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            rows = collect(sweep_dir)
            write_csv(rows, sweep_dir / "summary.csv")
            print_table(sweep_dir)
            print(f"sweep summary ({len(rows)} jobs): {sweep_dir / 'summary.csv'}")
