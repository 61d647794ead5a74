"""The record as data: `docs/results.yaml` holds every measured figure (one row per measurement: what, command,
accuracy with its interval per test setting, date, hardware, wall time), the reproduction cards hold the figures
`metalearn-reproduce` reruns, and the tables in the README and `docs/` are generated from both.

A generated table sits between two markers in a markdown file:

    <!-- record:table omniglot_small -->      (or <!-- record:cards -->)
    ...                                       written by `metalearn-reproduce tables`, never by hand
    <!-- record:end -->

`check()` (run by `metalearn-reproduce tables --check` and by the default test suite) fails when a generated table
differs from what its data renders, or when an accuracy written outside the tables (`96.41 ± 0.41%` or a bare
`96.41%`, in the prose or in a preset's header in configs/experiment/) is not a figure of the record or of a
card. Paired differences (`+0.42 ± 0.31`) are not accuracies and are not checked. Torch-free: reading the record
imports no model code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from metalearn.errors import MetalearnError

REPO = Path(__file__).resolve().parent.parent  # a checkout: the record lives in its docs/, not in the package
RECORD = REPO / "docs" / "results.yaml"
DOCUMENTS = ("README.md", "docs/guide.md", "docs/results.md", "docs/performance.md")
BLOCK = re.compile(r"(<!-- record:(table [A-Za-z0-9_]+|cards) -->\n)(.*?)(<!-- record:end -->)", re.S)
ACCURACY = re.compile(r"(?<![\d.+−-])(\d{1,3}\.\d\d)(?:\s±\s(\d+\.\d\d))?%")
ROW_KEYS = {"id", "table", "what", "date", "hardware", "command", "wall", "scores", "text", "quote"}
SCORE_KEYS = {"acc", "ci95", "bold", "after"}
NUMBER = re.compile(r"(?<![\d.])\d{1,3}\.\d\d(?![\d])")
TOP_FIELDS = ("what", "command", "wall")


@dataclass
class Record:
    """The parsed results table: test settings, table layouts and measurements, each checked on load."""

    settings: dict[str, dict]
    tables: dict[str, dict]
    rows: list[dict] = field(default_factory=list)

    def row(self, row_id: str) -> dict:
        for r in self.rows:
            if r["id"] == row_id:
                return r
        raise MetalearnError(f"{RECORD.name}: no measurement with id {row_id!r}")

    def figures(self) -> set[tuple[str, str | None]]:
        """Every accuracy the record holds, as written: (accuracy, interval), and (accuracy, None)."""
        out: set[tuple[str, str | None]] = set()
        for r in self.rows:
            for s in scores_of(self, r).values():
                out.add((f"{s['acc']:.2f}", f"{s['ci95']:.2f}"))
                out.add((f"{s['acc']:.2f}", None))
            for text in [r.get(k) or "" for k in TOP_FIELDS] + list(r.get("text", {}).values()) + \
                    [s.get("after", "") for s in r.get("scores", {}).values()]:
                for acc, ci in ACCURACY.findall(text):
                    out.add((acc, ci or None))
                out |= {(acc, None) for acc in NUMBER.findall(text)}  # a cell's "97.97 / 93.63" are accuracies too
        return out


def _fail(where: str, problem: str) -> MetalearnError:
    return MetalearnError(f"{RECORD.name}: {where}: {problem} (the layout is in metalearn/record.py's docstring)")


def load(path: Path = RECORD) -> Record:
    """docs/results.yaml, validated: an unknown key, a figure out of range or a row of an unknown table is one line."""
    if not path.is_file():
        raise MetalearnError(f"no results table at {path}")
    data = yaml.safe_load(path.read_text())
    if set(data) != {"settings", "tables", "measurements"}:
        raise _fail("top level", f"expected settings, tables, measurements; found {sorted(data)}")
    rec = Record(settings=data["settings"], tables=data["tables"], rows=data["measurements"])
    seen: set[str] = set()
    for r in rec.rows:
        rid = r.get("id", "?")
        unknown = set(r) - ROW_KEYS
        if unknown:
            raise _fail(f"measurement {rid}", f"unknown key {sorted(unknown)[0]!r} (known: {sorted(ROW_KEYS)})")
        for key in ("id", "table", "what", "date", "hardware"):
            if not isinstance(r.get(key), str):
                raise _fail(f"measurement {rid}", f"{key} must be a string")
        if rid in seen:
            raise _fail(f"measurement {rid}", "the id is used twice")
        seen.add(rid)
        if r["table"] not in rec.tables:
            raise _fail(f"measurement {rid}", f"table {r['table']!r} is not declared under tables:")
        if not re.fullmatch(r"\d{4}-\d\d-\d\d", r["date"]):
            raise _fail(f"measurement {rid}", f"date {r['date']!r} is not YYYY-MM-DD")
        columns = rec.tables[r["table"]]["columns"]
        for key, s in r.get("scores", {}).items():
            if key not in columns:
                raise _fail(f"measurement {rid}", f"score {key!r} is not a column of table {r['table']}")
            if set(s) - SCORE_KEYS or not {"acc", "ci95"} <= set(s):
                raise _fail(f"measurement {rid}", f"score {key}: keys must be acc, ci95 (bold, after optional)")
            if not (0 <= s["acc"] <= 100 and 0 <= s["ci95"] <= 100):
                raise _fail(f"measurement {rid}", f"score {key}: accuracy and interval are percentages (0-100)")
        for key in r.get("text", {}):
            if key not in columns:
                raise _fail(f"measurement {rid}", f"text {key!r} is not a column of table {r['table']}")
    for r in rec.rows:
        quoted = r.get("quote", [])
        for rid in [quoted] if isinstance(quoted, str) else quoted:
            rec.row(rid)  # must exist
    return rec


def scores_of(rec: Record, row: dict) -> dict[str, dict]:
    """A row's scores. A row that quotes others (the README's methods table: one method's best 5-way row and its
    best 20-way row) shows their figures, plain (no bold, no trailing text), the first quoted row first."""
    out = dict(row.get("scores", {}))
    quoted = row.get("quote", [])
    for rid in [quoted] if isinstance(quoted, str) else quoted:
        for key, s in scores_of(rec, rec.row(rid)).items():
            out.setdefault(key, {"acc": s["acc"], "ci95": s["ci95"]})
    return out


def _score(s: dict) -> str:
    b = "**" if s.get("bold") else ""
    return f"{b}{s['acc']:.2f} ± {s['ci95']:.2f}%{b}{s.get('after', '')}"


def render_table(rec: Record, name: str) -> str:
    """A table of the record as markdown, its columns in the declared order."""
    if name not in rec.tables:
        raise MetalearnError(f"{RECORD.name}: no table {name!r} (tables: {', '.join(rec.tables)})")
    columns = rec.tables[name]["columns"]
    lines = ["| " + " | ".join(columns.values()) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for r in rec.rows:
        if r["table"] != name:
            continue
        scores = scores_of(rec, r)
        cells = []
        for key in columns:
            if key in scores:
                cells.append(_score(scores[key]))
            elif key in TOP_FIELDS:
                cells.append(r.get(key) or "")
            else:
                cells.append(r.get("text", {}).get(key, ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_cards() -> str:
    """Every reproduction card: what it checks, its expected figures, where they come from, its status."""
    from metalearn.cards import all_cards, format_source

    lines = ["| card | method | expected (setting: accuracy ± 95% interval) | source | status |",
             "| --- | --- | --- | --- | --- |"]
    for c in all_cards():
        figures = "; ".join(f"{s.setting}: {s.accuracy:.2f} ± {s.ci95:.2f}%" for s in c.expected)
        kind = "" if c.inductive else " (transductive)"
        lines.append(f"| `{c.name}` | {c.method}{kind} | {figures} | {format_source(c)} | {c.status} |")
    return "\n".join(lines) + "\n"


def _render_block(rec: Record, kind: str) -> str:
    return render_cards() if kind == "cards" else render_table(rec, kind.split(" ", 1)[1])


def regenerate(text: str, rec: Record) -> str:
    """The document with every generated table rewritten from the data."""
    return BLOCK.sub(lambda m: m.group(1) + _render_block(rec, m.group(2)) + m.group(4), text)


def card_figures() -> set[tuple[str, str | None]]:
    from metalearn.cards import all_cards

    out: set[tuple[str, str | None]] = set()
    for c in all_cards():
        for s in c.expected:
            out |= {(f"{s.accuracy:.2f}", f"{s.ci95:.2f}"), (f"{s.accuracy:.2f}", None)}
    return out


def stray_figures(text: str, known: set[tuple[str, str | None]]) -> list[str]:
    """Accuracies in the prose (outside generated tables) that are not figures of the record or of a card."""
    prose = BLOCK.sub("", text)
    return [m.group(0) for m in ACCURACY.finditer(prose) if (m.group(1), m.group(2)) not in known]


def check(root: Path = REPO, rec: Record | None = None) -> list[str]:
    """Every disagreement between the documents and the record, one line each (empty: they agree)."""
    rec = rec or load(root / "docs" / "results.yaml")
    known = rec.figures() | card_figures()
    problems = []
    used: set[str] = set()
    for name in DOCUMENTS:
        path = root / name
        if not path.is_file():
            continue
        text = path.read_text()
        for m in BLOCK.finditer(text):
            used.add(m.group(2))
            if m.group(3) != _render_block(rec, m.group(2)):
                problems.append(f"{name}: the generated table '{m.group(2)}' differs from its data "
                                f"(run metalearn-reproduce tables)")
        for fig in stray_figures(text, known):
            problems.append(f"{name}: {fig} is not a figure of docs/results.yaml or of a card")
    for path in sorted((root / "configs" / "experiment").glob("*.yaml")):  # a preset's header quotes its figures
        for fig in stray_figures(path.read_text(), known):
            problems.append(f"configs/experiment/{path.name}: {fig} is not a figure of docs/results.yaml or of a card")
    for t in rec.tables:
        if f"table {t}" not in used:
            problems.append(f"docs/results.yaml: table {t!r} is shown in no document (add <!-- record:table {t} -->)")
    return problems


SETTING_COLUMNS = {"20w1s_within-alphabet_drawers": "within"}  # result tags whose column key is shorter


def row_from_run(run: Path, table: str = "TABLE") -> dict:
    """A measurement row for docs/results.yaml read from a finished run folder (summary.json only, never a
    pickle), so a figure is copied, never typed: the test accuracies per setting, the command, the date and
    the training wall time. `what` and `table` are left for the author to fill."""
    import json
    import shlex

    s = json.loads((run / "summary.json").read_text())
    scores = {SETTING_COLUMNS.get(tag, tag): {"acc": round(100 * t["accuracy"], 2), "ci95": round(100 * t["ci95"], 2)}
              for tag, t in s.get("test", {}).items()}
    overrides = [o for o in s.get("overrides", []) if not o.startswith("run_dir=")]
    row = {"id": f"{table}.{run.name}", "table": table, "what": s.get("method", "?"),
           "date": str(s.get("started", ""))[:10] or "YYYY-MM-DD", "hardware": s.get("device", "cpu"),
           "command": "`metalearn-train " + " ".join(shlex.quote(o) for o in overrides) + "`",
           "wall": f"{s.get('wall_time_s', 0) / 60:.1f} min"}
    if scores:
        row["scores"] = scores
    return row


def write(root: Path = REPO) -> list[str]:
    """Regenerate every table in place; returns the files that changed."""
    rec = load(root / "docs" / "results.yaml")
    changed = []
    for name in DOCUMENTS:
        path = root / name
        if path.is_file():
            old = path.read_text()
            new = regenerate(old, rec)
            if new != old:
                path.write_text(new)
                changed.append(name)
    return changed
