"""`metalearn-report PATH...`: a leaderboard from any set of run and sweep folders.

    metalearn-report outputs/train outputs/multirun/2026-11-22 --out outputs/report

Writes to --out: leaderboard.md and leaderboard.csv (test accuracy ± 95% CI of every run, per dataset and
task, best first; each run's paired difference to the leader where both were scored on the same episodes,
with its t interval and p-value, and whether it can be told from the leader at 95% after Holm's correction
for the number of comparisons; the test-time batch-norm statistics of each embedding method), seeds.csv
(one row per configuration: its distinct seeds averaged with a Student's t interval over k seeds, and its
difference to the best configuration with several seeds, counting the seeds' and the episodes' noise; or, when
every run used one seed, the repeats and whether they reproduced it exactly), learning_curves.png and
accuracy_vs_shots.png.

Runs scored on different episodes are never paired: their row says so. Transductive results (a task's
queries classified together: TIM, batch norm with the queries' statistics) get tables of their own,
"5w1s (transductive)", so they are never ranked or paired with inductive ones. Pairing removes the episode-to-
episode variance two runs share, so it can separate methods whose own intervals overlap.

A multi-source run (dataset=multi) is listed by its sources (omniglot_small+synthetic) with the mean over them, and
gets a per-source table: each source's accuracy, the mean, and the average rank over sources. Cross-domain results
(metalearn-eval run=<run> dataset=<another>, read from the run's eval/cross-*.json) are listed as "<trained on> ->
<tested on> (cross-domain)", apart from every in-domain result.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metalearn.cli import console_script
from metalearn.engine.rundir import SUMMARY, RunFolder, read_metrics
from metalearn.errors import MetalearnError
from metalearn.files import write_csv
from metalearn.stats import Paired, difference_over_seeds, holm, paired_difference, t_interval


@dataclass
class Result:
    run: Path
    method: str
    dataset: str
    tag: str  # e.g. 5w1s
    ways: int
    shots: int
    accuracy: float
    ci95: float
    digest: str | None
    per_episode: np.ndarray | None
    config: str  # the run's overrides without its seed and folder
    seed: int
    status: str
    extra: dict = field(default_factory=dict)


def find_runs(paths: list[Path]) -> list[Path]:
    """Every folder holding a summary.json under the given paths (runs, sweeps, or output roots), less the
    pre-training stages that only fed their run (is_feeding_stage)."""
    found: set[Path] = set()
    for p in paths:
        if (p / SUMMARY).is_file():
            found.add(p.resolve())
        elif p.is_dir():
            found.update(s.parent.resolve() for s in p.rglob(SUMMARY))
    return sorted(f for f in found if not is_feeding_stage(f))


def is_feeding_stage(folder: Path) -> bool:
    """A pre-training stage (<run>/pretrain, metalearn.engine.stages) that completed without a test of its own: its
    weights are its run's start, not a result, so it is no leaderboard row ("no test result"). A stage that failed,
    or that was tested, is listed like any run."""
    from metalearn.engine.stages import STAGE_DIR

    if folder.name != STAGE_DIR or not (folder.parent / SUMMARY).is_file():
        return False
    try:
        s = json.loads((folder / SUMMARY).read_text())
    except (OSError, ValueError):
        return False
    return s.get("status") == "completed" and not s.get("test")


def transductive(summary: dict, test: dict) -> bool:
    """Whether a test result classified each task's queries together: recorded since 2026-12 (`transductive`);
    for older runs, inferred from their batch-norm settings (the MAML family's and meta_lstm's batch statistics)."""
    method = summary.get("method_config") or {}
    return bool(test.get("transductive") or test.get("batch_norm") == "transductive"
                or method.get("batch_norm") == "transductive" or summary.get("method") == "meta_lstm")


def load_results(run: Path) -> list[Result]:
    from metalearn.engine.rundir import observed_status

    try:
        s = json.loads((run / SUMMARY).read_text())
        s["status"] = observed_status(s)
    except (OSError, ValueError, AttributeError):  # listed, never dropped, never a crash of the whole report
        s = {"status": "unreadable summary.json"}
    dataset = (s.get("choices") or {}).get("dataset") or s.get("dataset", "?")  # omniglot_small is not omniglot
    overrides = [o for o in s.get("overrides", [])
                 if not o.startswith(("seed=", "run_dir=", "resume=", "max_minutes=", "tags=", "notes=", "logger="))]
    tags = [str(t) for t in s.get("tags") or []]
    out = []
    common = {"wall_time_s": s.get("wall_time_s"), "steps": s.get("steps_done"), "tags": tags,
              "ranks": (s.get("ranks") or {}).get("world_size", 1)}
    for tag, t in (s.get("test") or {}).items():
        per = None
        path = RunFolder(run, read_only=True).eval_dir / f"test_{tag}.json"
        if path.is_file():
            per = np.asarray(json.loads(path.read_text())["per_episode"], dtype=np.float64)
        shown = f"{tag} (transductive)" if transductive(s, t) else tag  # its own table: never paired with inductive
        ways, shots = t.get("ways", 0), t.get("shots", 0)  # 0: variable episodes (their own table, tag "variable")
        sources = {n: (v["accuracy"], v["ci95"]) for n, v in (t.get("sources") or {}).items()}
        label = "+".join(sources) if sources else dataset  # a multi-source run: by its sources
        out.append(Result(run, s.get("method", "?"), label, shown, ways, shots, t["accuracy"], t["ci95"],
                          t.get("episodes_digest"), per, " ".join(sorted(overrides)), s.get("seed", 0),
                          s.get("status", "?"), {**common, "batch_norm": t.get("batch_norm"),
                                                  **({"sources": sources} if sources else {})}))
    trained_on = out[0].dataset if out else dataset
    out += cross_domain_results(run, s, trained_on, " ".join(sorted(overrides)), common)
    if not out:  # failed or unfinished runs still appear, so nothing is silently dropped
        out.append(Result(run, s.get("method", "?"), dataset, "-", 0, 0, math.nan, math.nan, None, None,
                          " ".join(sorted(overrides)), s.get("seed", 0), s.get("status", "?"),
                          {"wall_time_s": s.get("wall_time_s"), "steps": s.get("steps_done"), "tags": tags}))
    return out


CROSS = "cross-"  # eval/cross-<dataset>_<protocol>.json: metalearn-eval dataset=<another> (metalearn.eval.cross_named)


def cross_domain_results(run: Path, summary: dict, trained_on: str, config: str, common: dict) -> list[Result]:
    """The run's cross-domain results (metalearn-eval run=<run> dataset=<another>), each in a table of its own
    ("<trained on> -> <tested on> (cross-domain)"): never ranked or paired with in-domain results. A file that cannot
    be read is skipped; the in-domain rows stand without it."""
    out = []
    folder = RunFolder(run, read_only=True).eval_dir
    for path in sorted(folder.glob(f"{CROSS}*.json")) if folder.is_dir() else []:
        try:
            r = json.loads(path.read_text())
            target = r["cross_domain"]["tested_on"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        protocol = path.stem[len(CROSS) + len(target) + 1:]  # <split>_<tag>_q.._e.._seed.._<checkpoint>[...]
        shown = f"{protocol} (transductive)" if r.get("transductive") else protocol
        fixed = r.get("sampler") != "variable"  # a variable result's ways and shots are per-episode lists
        ways, shots = (r.get("ways", 0), r.get("shots", 0)) if fixed else (0, 0)
        out.append(Result(run, summary.get("method", "?"), f"{trained_on} -> {target} (cross-domain)", shown, ways,
                          shots, r["accuracy"], r["ci95"], r.get("episodes_digest"),
                          np.asarray(r["per_episode"], dtype=np.float64), config, summary.get("seed", 0),
                          summary.get("status", "?"), {**common, "batch_norm": r.get("batch_norm"),
                                                       "cross_domain": target}))
    return out


def per_source_tables(results: list[Result]) -> list[dict]:
    """Meta-Dataset's summary for multi-source runs: per (sources, task), each run's accuracy on each source, their
    mean, and its rank on each source (1 = best, ties share the mean rank) averaged over the sources."""
    tables = []
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        if r.extra.get("sources") and not math.isnan(r.accuracy):
            groups.setdefault((r.dataset, r.tag), []).append(r)
    for (dataset, tag), rs in sorted(groups.items()):
        sources = list(rs[0].extra["sources"])
        ranks = {n: _ranks([r.extra["sources"].get(n, (math.nan,))[0] for r in rs]) for n in sources}
        rows = []
        for i, r in enumerate(rs):
            mine = [ranks[n][i] for n in sources if not math.isnan(ranks[n][i])]
            rows.append({"dataset": dataset, "task": tag, "method": r.method, "run": str(r.run),
                         **{n: r.extra["sources"].get(n, (math.nan, math.nan)) for n in sources},
                         "mean": r.accuracy, "mean_ci95": r.ci95,
                         "average_rank": float(np.mean(mine)) if mine else math.nan})
        rows.sort(key=lambda row: (row["average_rank"], -row["mean"]))
        tables.append({"dataset": dataset, "task": tag, "sources": sources, "rows": rows})
    return tables


def _ranks(values: list[float]) -> list[float]:
    """Rank 1 for the highest value; ties share their mean rank; a missing value (nan) has no rank."""
    present = sorted((v for v in values if not math.isnan(v)), reverse=True)
    return [math.nan if math.isnan(v) else float(np.mean([i + 1 for i, p in enumerate(present) if p == v]))
            for v in values]


def leaderboard(results: list[Result]) -> list[dict]:
    """Ranked rows per dataset and task; runs with no test result (failed, unfinished, killed) come last, unranked:
    a failed run is never anyone's leader."""
    rows = []
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        if not math.isnan(r.accuracy):
            groups.setdefault((r.dataset, r.tag), []).append(r)
    for (dataset, tag), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: -r.accuracy if not math.isnan(r.accuracy) else math.inf)
        leader = rs[0]
        paired = [_paired_to(r, leader) if r is not leader else None for r in rs]
        distinct = holm([p.p_value if p is not None else math.nan for p in paired])
        for rank, (r, p, told_apart) in enumerate(zip(rs, paired, distinct, strict=True), 1):
            if r is leader:
                diff, verdict = "", "leader"
            elif math.isnan(r.accuracy):
                diff, verdict = "", "no test result"
            elif p is None:
                diff, verdict = "", ("not paired: other episodes" if r.digest != leader.digest
                                     else "not paired: no per-episode results")
            else:
                diff = f"{100 * p.mean:+.2f} ± {100 * p.half_width:.2f} (p={p.p_value:.2g}, n={p.n})"
                verdict = "below the leader" if told_apart else "not distinguishable from the leader"
            rows.append({"dataset": dataset, "task": tag, "rank": rank, "method": r.method,
                         "accuracy": r.accuracy, "ci95": r.ci95,
                         "episodes_n": len(r.per_episode) if r.per_episode is not None else "",
                         "vs_leader": diff, "p_value": "" if p is None else p.p_value, "vs_leader_holm": verdict,
                         "seed": r.seed, "status": r.status, "config": r.config, "run": str(r.run),
                         "wall_time_s": r.extra.get("wall_time_s"), "episodes": r.digest,
                         "test_batch_norm": r.extra.get("batch_norm") or "", "tags": ",".join(r.extra.get("tags", [])),
                         "ranks": r.extra.get("ranks", 1)})
    for r in (r for r in results if math.isnan(r.accuracy)):
        rows.append({"dataset": r.dataset, "task": r.tag, "rank": "", "method": r.method, "accuracy": r.accuracy,
                     "ci95": r.ci95, "episodes_n": "", "vs_leader": "", "p_value": "", "vs_leader_holm": "no test result",
                     "seed": r.seed, "status": r.status, "config": r.config, "run": str(r.run),
                     "wall_time_s": r.extra.get("wall_time_s"), "episodes": r.digest, "test_batch_norm": "",
                     "tags": ",".join(r.extra.get("tags", [])), "ranks": r.extra.get("ranks", 1)})
    return rows


def _paired_to(r: Result, leader: Result) -> Paired | None:
    """r - leader over the same episodes, or None when they were not scored on the same ones."""
    if r.per_episode is None or leader.per_episode is None or r.digest != leader.digest \
            or len(r.per_episode) != len(leader.per_episode) or math.isnan(r.accuracy):
        return None
    return paired_difference(r.per_episode, leader.per_episode)


def across_seeds(results: list[Result]) -> list[dict]:
    """One row per configuration (dataset, task, method, overrides without the seed). Runs count as seeds only
    when their seeds differ: repeats of one seed are averaged into that seed first, and a configuration run
    with one seed only shows its repeats and whether they reproduced the same result exactly."""
    groups: dict[tuple[str, str, str, str], list[Result]] = {}
    for r in results:
        if not math.isnan(r.accuracy):
            groups.setdefault((r.dataset, r.tag, r.method, r.config), []).append(r)
    rows: list[dict] = []
    matrices: dict[int, tuple[str, np.ndarray] | None] = {}
    for (dataset, tag, method, config), rs in sorted(groups.items()):
        by_seed: dict[int, list[Result]] = {}
        for r in rs:
            by_seed.setdefault(r.seed, []).append(r)
        seed_means = [float(np.mean([r.accuracy for r in same])) for same in by_seed.values()]
        ci = t_interval(seed_means)
        reproduced = ""
        if len(by_seed) == 1 and len(rs) > 1:
            reproduced = "identical" if all(_same_result(rs[0], r) for r in rs[1:]) else "differ"
        rows.append({"dataset": dataset, "task": tag, "method": method, "config": config, "seeds": len(by_seed),
                     "runs": len(rs), "mean_accuracy": ci.mean, "ci95_across_seeds": ci.half_width,
                     "interval": f"Student's t, {len(by_seed) - 1} df" if len(by_seed) > 1 else "",
                     "repeats_reproduced": reproduced, "vs_best_config": "", "vs_best_config_p": ""})
        matrices[len(rows) - 1] = _seeds_by_episodes(by_seed)
    _against_best_config(rows, matrices)
    return rows


def _seeds_by_episodes(by_seed: dict[int, list[Result]]) -> tuple[str, np.ndarray] | None:
    """[seeds, episodes] per-episode accuracies (a seed's repeats averaged) when every run has them for the same
    episodes and there are at least two seeds; else None."""
    rs = [r for same in by_seed.values() for r in same]
    if len(by_seed) < 2 or any(r.per_episode is None for r in rs) or len({(r.digest, len(r.per_episode))
                                                                         for r in rs}) != 1:
        return None
    return rs[0].digest, np.stack([np.mean([r.per_episode for r in same], axis=0) for same in by_seed.values()])


def _against_best_config(rows: list[dict], matrices: dict[int, tuple[str, np.ndarray] | None]) -> None:
    """Each configuration with several seeds against the best such configuration of its dataset and task, on the
    same episodes: difference_over_seeds, which counts both the seeds' and the shared episodes' noise."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, m in matrices.items():
        if m is not None:
            groups.setdefault((rows[i]["dataset"], rows[i]["task"], m[0]), []).append(i)
    for members in groups.values():
        best = max(members, key=lambda i: rows[i]["mean_accuracy"])
        rows[best]["vs_best_config"] = "best"
        others = [i for i in members if i != best]
        diffs = [difference_over_seeds(matrices[i][1], matrices[best][1]) for i in others]
        below = holm([d.p_value for d in diffs])  # as the leaderboard: corrected for the number of comparisons
        for i, d, told_apart in zip(others, diffs, below, strict=True):
            verdict = "below the best, Holm 95%" if told_apart else "not distinguishable, Holm 95%"
            rows[i]["vs_best_config"] = f"{100 * d.mean:+.2f} ± {100 * d.half_width:.2f} (p={d.p_value:.2g}; {verdict})"
            rows[i]["vs_best_config_p"] = d.p_value


def _same_result(a: Result, b: Result) -> bool:
    if a.per_episode is not None and b.per_episode is not None:
        return a.digest == b.digest and np.array_equal(a.per_episode, b.per_episode)
    return a.accuracy == b.accuracy


def _pct(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def markdown(rows: list[dict], seeds: list[dict], sources: list[dict] | None = None) -> str:
    lines = ["# metalearn leaderboard", ""]
    for table in sources or []:
        names = table["sources"]
        lines += [f"## Per source: {table['dataset']}, {table['task']}", "",
                  "Each source scored alone on its own test classes (in-domain); the mean over sources, and each run's "
                  "rank on each source averaged (Meta-Dataset's summary). Cross-domain results have tables of their "
                  "own below.", "",
                  "| method | " + " | ".join(names) + " | mean | average rank | run |",
                  "| --- | " + " | ".join("---" for _ in names) + " | --- | --- | --- |"]
        for r in table["rows"]:
            cells = " | ".join(f"{_pct(r[n][0])} ± {_pct(r[n][1])}%" for n in names)
            rank = "—" if math.isnan(r["average_rank"]) else f"{r['average_rank']:.2f}"
            lines.append(f"| {r['method']} | {cells} | {_pct(r['mean'])} ± {_pct(r['mean_ci95'])}% | {rank} | "
                         f"{Path(r['run']).name} |")
        lines.append("")
    untested = [r for r in rows if r["rank"] == ""]
    rows = [r for r in rows if r["rank"] != ""]
    for key in sorted({(r["dataset"], r["task"]) for r in rows}):
        lines += [f"## {key[0]}, {key[1]}", "", "| # | method | accuracy (95% CI, n episodes) | vs leader, paired "
                  "(p, n) | vs leader, Holm 95% | test batch norm | seed | status | config | tags | run |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in (r for r in rows if (r["dataset"], r["task"]) == key):
            n = f", n={r['episodes_n']}" if r["episodes_n"] != "" else ""
            ranks = f" ({r['ranks']} ranks)" if r["ranks"] > 1 else ""  # a torchrun run
            lines.append(f"| {r['rank']} | {r['method']} | {_pct(r['accuracy'])} ± {_pct(r['ci95'])}%{n} | "
                         f"{r['vs_leader']} | {r['vs_leader_holm']} | {r['test_batch_norm'] or '—'} | {r['seed']} | "
                         f"{r['status']}{ranks} | `{r['config']}` | {r['tags'] or '—'} | {Path(r['run']).name} |")
        lines.append("")
    if untested:
        lines += ["## Runs without a test result", "", "Failed, unfinished or killed, or trained with no test "
                  "(test.episodes=0): listed so that nothing is silently dropped, never ranked.", "",
                  "| method | dataset | status | seed | config | run |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['method']} | {r['dataset']} | {r['status']} | {r['seed']} | `{r['config']}` | "
                  f"{Path(r['run']).name} |" for r in untested]
        lines.append("")
    multi = [s for s in seeds if s["seeds"] > 1]
    if multi:
        lines += ["## Across seeds", "", "Each seed's runs averaged, then a Student's t interval over the k seeds "
                  "(k - 1 degrees of freedom). Against the best configuration: the difference in points with its 95% "
                  "interval counting both the seeds' noise and that of the episodes every seed shares "
                  "(metalearn.stats.difference_over_seeds); only configurations scored on the same episodes.", "",
                  "| dataset | task | method | config | seeds (k) | runs | mean (95% CI across seeds) | "
                  "vs the best configuration |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for s in multi:
            lines.append(f"| {s['dataset']} | {s['task']} | {s['method']} | `{s['config']}` | {s['seeds']} | "
                         f"{s['runs']} | {_pct(s['mean_accuracy'])} ± {_pct(s['ci95_across_seeds'])}% | "
                         f"{s['vs_best_config'] or '—'} |")
        lines.append("")
    repeats = [s for s in seeds if s["seeds"] == 1 and s["runs"] > 1]
    if repeats:
        lines += ["## Repeats of one seed", "", "Runs of one configuration with the same seed are one sample, not "
                  "several: no interval across them. On the CPU they should reproduce each other exactly.", "",
                  "| dataset | task | method | config | runs | accuracy | reproduced |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for s in repeats:
            lines.append(f"| {s['dataset']} | {s['task']} | {s['method']} | `{s['config']}` | {s['runs']} | "
                         f"{_pct(s['mean_accuracy'])}% | {s['repeats_reproduced']} |")
    return "\n".join(lines) + "\n"


def plots(results: list[Result], out: Path) -> list[Path]:
    from metalearn.engine.plots import have_matplotlib

    if not have_matplotlib():
        print("the report's plots are not drawn: matplotlib is not installed (pip install -e \".[plots]\")",
              file=sys.stderr)
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return [_learning_curves(results, out / "learning_curves.png", plt),
            _accuracy_vs_shots(results, out / "accuracy_vs_shots.png", plt)]


def _learning_curves(results: list[Result], path: Path, plt) -> Path:
    """One panel per dataset and task: each run's validation accuracy with its 95% interval (training accuracy,
    dashed, for a run without validation), short labels, the legend beside the axes."""
    panels: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        if r.tag != "-" and all(r.run != o.run for o in panels.get((r.dataset, r.tag), [])):
            panels.setdefault((r.dataset, r.tag), []).append(r)
    keys = sorted(panels) or [("no runs", "")]
    fig, axes = plt.subplots(len(keys), 1, figsize=(9, 3.2 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        for i, r in enumerate(sorted(panels.get(key, []), key=lambda r: (r.method, r.seed, str(r.run)))):
            metrics = RunFolder(r.run, read_only=True).metrics_path
            records = read_metrics(metrics) if metrics.is_file() else []
            val = [m for m in records if m.get("kind") == "val"]
            label = f"{r.method} s{r.seed} ({r.run.name[-12:]})"
            if val:
                x, y, c = (np.array([m[k] for m in val], dtype=float) for k in ("step", "accuracy", "ci95"))
                ax.plot(x, y, marker="o", ms=3, color=f"C{i}", label=label)
                ax.fill_between(x, y - c, y + c, color=f"C{i}", alpha=0.15)
            else:
                train = [m for m in records if m.get("kind") == "train"]
                if train:
                    ax.plot([m["step"] for m in train], [m["accuracy"] for m in train], ls="--", color=f"C{i}",
                            label=f"{label}, train")
        ax.set(xlabel="step", ylabel="validation accuracy", title=f"{key[0]}, {key[1]}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _accuracy_vs_shots(results: list[Result], path: Path, plt) -> Path:
    """Test accuracy against shots, pooling only runs that differ in shots (and seed): the same dataset, method,
    ways and every other override. A point is one run with its own interval, or the mean of its seeds with a
    Student's t interval across them."""
    series: dict[tuple[str, str, int, str], dict[int, list[Result]]] = {}
    for r in results:
        if not math.isnan(r.accuracy):
            rest = " ".join(o for o in r.config.split() if not o.startswith(("shots=", "test.shots=")))
            series.setdefault((r.dataset, r.method, r.ways, rest), {}).setdefault(r.shots, []).append(r)
    fig, ax = plt.subplots(figsize=(8, 4))
    ticks: set[int] = set()
    for i, ((dataset, method, ways, rest), by_shots) in enumerate(sorted(series.items())):
        shots = sorted(by_shots)
        ticks.update(shots)
        means, errs = [], []
        for k in shots:
            rs = by_shots[k]
            seeds = {r.seed for r in rs}
            if len(seeds) > 1:
                ci = t_interval([float(np.mean([r.accuracy for r in rs if r.seed == s])) for s in sorted(seeds)])
                means.append(ci.mean)
                errs.append(ci.half_width)
            else:
                means.append(float(np.mean([r.accuracy for r in rs])))
                errs.append(rs[0].ci95)
        label = textwrap.shorten(f"{method}, {dataset}, {ways}-way" + (f": {rest}" if rest else ""), 70, placeholder=" …")
        ax.errorbar(shots, means, yerr=errs, marker="o", capsize=3, color=f"C{i}", label=label)
    ax.set_xticks(sorted(ticks))
    low, high = ax.get_ylim()
    ax.set_ylim(max(0.0, low), min(1.0, high))  # an interval past 0 or 1 is cut at the axis, not the data
    ax.set(xlabel="shots", ylabel="test accuracy (95% CI)", title="accuracy vs shots")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(paths: list[Path], out: Path, tags: list[str] | None = None) -> dict:
    """The leaderboard of the runs under `paths`; with `tags`, only the runs carrying at least one of them."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise MetalearnError(f"no such path: {', '.join(missing)}; give run folders, sweep folders or outputs/")
    runs = find_runs(paths)
    if not runs:
        raise MetalearnError(f"no run folders (with a summary.json) under {', '.join(map(str, paths))}; give folders "
                             f"that metalearn-train wrote (outputs/train, outputs/multirun/...)")
    results = [r for run in runs for r in load_results(run)]
    if tags:
        results = [r for r in results if set(tags) & set(r.extra.get("tags", []))]
        runs = sorted({r.run for r in results})
        if not results:
            raise MetalearnError(f"no run under {', '.join(map(str, paths))} has the tags {', '.join(tags)}; "
                                 f"runs get tags with metalearn-train tags=[{tags[0]}]")
    rows, seeds, sources = leaderboard(results), across_seeds(results), per_source_tables(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "leaderboard.md").write_text(markdown(rows, seeds, sources))
    write_csv(rows, out / "leaderboard.csv")
    write_csv(seeds, out / "seeds.csv")
    images = plots(results, out)
    files = [out / "leaderboard.md", out / "leaderboard.csv", out / "seeds.csv", *images]
    return {"runs": len(runs), "rows": rows, "seeds": seeds, "sources": sources, "files": files}


@console_script
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="metalearn-report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", type=Path, help="run folders, sweep folders, or folders holding them")
    ap.add_argument("--out", type=Path, default=Path("outputs/report"),
                    help="the folder the leaderboard and plots are written to (default: outputs/report)")
    ap.add_argument("--tags", default=None, help="only runs with any of these tags, comma-separated (tags=[...] at training)")
    args = ap.parse_args(argv)
    try:
        result = report(args.paths, args.out, [t for t in (args.tags or "").split(",") if t])
    except MetalearnError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        print(f"error: cannot read or write {e.filename or ''}: {e.strerror or e}; check --out and the paths",
              file=sys.stderr)
        sys.exit(2)
    print((args.out / "leaderboard.md").read_text())
    print(f"{result['runs']} runs -> " + ", ".join(str(p) for p in result["files"]), file=sys.stderr)


if __name__ == "__main__":
    main()
