"""`metalearn-reproduce`: rerun a published figure by name and say whether it agrees.

    metalearn-reproduce list                                   # every card: figures, source, time, data here?
    metalearn-reproduce meta_baseline_elastic_omniglot_small dataset.root=../shared/data/omniglot
    metalearn-reproduce protonet_omniglot_small --eval-only run=outputs/train/<run>   # check a finished run
    metalearn-reproduce protonet_omniglot_small debug=smoke    # the card's pipeline in seconds, figures not compared
    metalearn-reproduce maml_omniglot_small_5w1s --force       # a GPU card on this CPU anyway
    metalearn-reproduce <card> run_dir=PATH                    # its runs under PATH (default outputs/reproduce/<card>/<time>)
    metalearn-reproduce tables                                 # regenerate the README's and docs/' tables from the record
    metalearn-reproduce tables --check                         # exit 1, one line per table or figure off its data

A card (configs/cards/<name>.yaml, schema metalearn/config/cards.py) names the presets and overrides that made a
figure, the settings it was scored on, the expected accuracy with its 95% interval and episode digest, and where
the figure comes from (measured here: date, hardware, threads, precision, wall time; or a paper).

Agreement, per setting: the 95% interval of the difference between the measured and the expected accuracy,
taken as two independent estimates (half-width sqrt(ci_measured^2 + ci_expected^2)), contains 0; and the figure
was scored on the card's episodes (the same count, and the same digest where the card has one). Why this and
not equality: a rerun on the card's hardware and thread count repeats the figure to the digit, but another CPU
or thread count changes float rounding, and a rerun that differs only by such rounding lands within that interval
about 95% of the time. It is not a test across seeds (a seed's own spread is not in a card's interval). Exit 0
when every setting agrees, 1 when one does not, 2 on bad input (an unknown card, missing data, a GPU card on a
CPU without --force). The record (expected, measured, differences, verdict, wall time, commit) is written as
reproduction.json into the run folder that holds the figure.

The record: every other figure of the docs is a row of docs/results.yaml (metalearn/record.py); `tables` writes
the generated tables of README.md and docs/*.md from it and from the cards.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

from metalearn.cards import SETTING, all_cards, find_card, format_source, load_card  # noqa: F401 - load_card: tests
from metalearn.cli import console_script
from metalearn.errors import MetalearnError

# what debug=smoke sets (configs/debug/smoke.yaml) and the hardware: a card's own value of these would make its
# smoke run as long as the real one (an explicit steps= beats the debug group), so smoke mode drops them
SMOKE_SETS = ("steps", "log_every", "checkpoint_every", "val.", "test.episodes", "method.backbone.width", "hardware",
              "sampler.meta_batch")
SMOKE_ADDS = ("sampler.meta_batch=1", "test.episodes=5", "val.every=0")  # a card's pipeline in seconds, not minutes










def data_root(card, overrides: list[str]) -> Path | None:
    """dataset.root= on the command line, else the card's root: absolute, or relative to the working folder, then
    to the folder above the project (where ../shared sits beside a checkout)."""
    from metalearn.config import config_dir

    given = [o.split("=", 1)[1] for o in overrides if o.startswith("dataset.root=")]
    if given:
        return Path(given[-1]).expanduser()
    if card.data.root is None:
        return None
    root = Path(card.data.root).expanduser()
    if root.is_absolute():
        return root
    for base in (Path.cwd(), Path(config_dir()).resolve().parent):
        if (base / root).is_dir():
            return (base / root).resolve()
    return root


def data_present(card, root: Path | None) -> bool:
    return root is None or (root.is_dir() and all((root / f).is_file() for f in card.data.files))




def show_list() -> None:
    for card in all_cards():
        root = data_root(card, [])
        figures = ", ".join(f"{s.setting} {s.accuracy:.2f} ± {s.ci95:.2f}" for s in card.expected)
        here = "data here" if data_present(card, root) else f"data missing ({card.data.dataset} in {root})"
        kind = "" if card.inductive else ", transductive"
        print(f"{card.name}  [{card.method}{kind}; {card.status}; {here}]\n    {card.title}\n    expected: {figures}\n"
              f"    {format_source(card)}{'; needs a GPU' if card.gpu else ''}")


def parse_setting(tag: str) -> dict:
    m = SETTING.match(tag)
    return {"ways": int(m["ways"]), "shots": int(m["shots"]), "within": m["within"], "disjoint_drawers": bool(m["drawers"])}


def agreement(expected, measured: dict) -> dict:
    """One setting compared: the difference, its 95% half-width, and whether it agrees (see the module's doc)."""
    acc, ci = 100 * measured["accuracy"], 100 * measured["ci95"]
    diff, half = acc - expected.accuracy, math.sqrt(ci ** 2 + expected.ci95 ** 2)
    same_episodes = measured.get("episodes") == expected.episodes and (
        expected.digest is None or measured.get("episodes_digest") == expected.digest)
    return {"setting": expected.setting, "expected": expected.accuracy, "expected_ci95": expected.ci95,
            "measured": round(acc, 4), "measured_ci95": round(ci, 4), "difference": round(diff, 4),
            "difference_ci95": round(half, 4), "episodes": measured.get("episodes"),
            "episodes_digest": measured.get("episodes_digest"), "expected_digest": expected.digest,
            "same_episodes": same_episodes, "agrees": same_episodes and abs(diff) <= half}


def train_runs(card, root: Path | None, out: Path, overrides: list[str], smoke: bool) -> dict[str, Path]:
    """Each of the card's runs, in order, as metalearn-train would run it; returns name -> run folder."""
    folders: dict[str, Path] = {}
    extra = [o for o in overrides if not o.startswith("dataset.root=")]
    for run in card.runs:
        args = [a.format(**{k: str(v) for k, v in folders.items()}) for a in run.overrides]
        if smoke:  # the pipeline, in seconds, on this machine: the card's hardware and sizes give way to smoke's
            args = [a for a in args if not a.split("=", 1)[0].startswith(SMOKE_SETS)] + ["debug=smoke", *SMOKE_ADDS]
        folder = out / run.name
        cmd = [sys.executable, "-m", "metalearn.train", *([f"experiment={run.preset}"] if run.preset else []),
               *([f"dataset.root={root}"] if root is not None else []), *args, *extra, f"run_dir={folder}"]
        print(f"[{card.name}] run {run.name}: metalearn-train {' '.join(cmd[3:])}", flush=True)
        done = subprocess.run(cmd)
        if done.returncode != 0:
            raise MetalearnError(f"card {card.name}: run {run.name} failed (exit {done.returncode}); see {folder}/train.log")
        folders[run.name] = folder
    return folders


def measure(card, folders: list[Path], root: Path | None, smoke: bool) -> dict[str, dict]:
    """setting -> the measured result: the main run's own test, or metalearn-eval with the card's options."""
    out = {}
    for expected in card.expected:
        if not card.evaluate:
            summary = json.loads((folders[-1] / "summary.json").read_text())
            test = (summary.get("test") or {}).get(expected.setting)
            if test is None:
                raise MetalearnError(f"card {card.name}: run {folders[-1]} has no test result {expected.setting}")
            out[expected.setting] = test
            continue
        s = parse_setting(expected.setting)
        members = f"ensemble=[{','.join(str(f) for f in folders[1:])}]" if len(folders) > 1 else None
        options = [f"ways={s['ways']}", f"shots={s['shots']}", f"disjoint_drawers={str(s['disjoint_drawers']).lower()}",
                   *([f"within={s['within']}"] if s["within"] else []), *card.evaluate,
                   f"episodes={5 if smoke else expected.episodes}", *([f"dataset_root={root}"] if root else [])]
        if smoke:
            options = [o.replace("tta.copies=96", "tta.copies=4") for o in options]
        cmd = [sys.executable, "-m", "metalearn.eval", f"run={folders[0]}", *([members] if members else []), *options]
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = re.findall(r"-> (\S+\.json)", done.stdout)
        if done.returncode != 0 or not found:
            raise MetalearnError(f"card {card.name}: metalearn-eval failed: {(done.stderr or done.stdout).strip()[-400:]}")
        out[expected.setting] = json.loads(Path(found[-1]).read_text())
    return out


def reproduce(name: str, overrides: list[str], force: bool = False, eval_only: list[Path] | None = None) -> int:
    from metalearn.engine.rundir import RunFolder, git_commit

    card = find_card(name)
    smoke = "debug=smoke" in overrides
    overrides = [o for o in overrides if o != "debug=smoke"]
    root = data_root(card, overrides)
    if not eval_only and not data_present(card, root):
        files = ", ".join(card.data.files) or "its files"
        raise MetalearnError(f"card {card.name} needs {card.data.dataset} in {root} ({files}); get it: {card.data.get}. "
                             f"Give its folder with dataset.root=PATH")
    if card.gpu and not smoke and not eval_only and not force:
        import torch

        if not torch.cuda.is_available():
            raise MetalearnError(f"card {card.name} was measured on {card.source.hardware or 'a GPU'} and needs a CUDA "
                                 f"GPU; on this machine's CPU it would take {card.cpu_estimate or 'many hours'}. "
                                 f"Run it on a GPU, or add --force to run it here anyway")
    started = time.time()
    if eval_only:
        folders = list(eval_only)
    else:
        stamp = time.strftime("%Y-%m-%d/%H-%M-%S")
        out = Path([o.split("=", 1)[1] for o in overrides if o.startswith("run_dir=")][-1]) if any(
            o.startswith("run_dir=") for o in overrides) else Path("outputs") / "reproduce" / card.name / stamp
        overrides = [o for o in overrides if not o.startswith("run_dir=")]
        trained = train_runs(card, root, out, overrides, smoke)
        folders = list(trained.values())
        if not card.evaluate:
            folders = [trained.get("main", folders[-1])]
    measured = measure(card, folders, root, smoke)
    rows = [agreement(e, measured[e.setting]) for e in card.expected]
    for r in rows:
        verdict = "agrees" if r["agrees"] else ("other episodes" if not r["same_episodes"] else "DIFFERS")
        print(f"  {r['setting']}: expected {r['expected']:.2f} ± {r['expected_ci95']:.2f}%, measured {r['measured']:.2f} "
              f"± {r['measured_ci95']:.2f}%, difference {r['difference']:+.2f} ± {r['difference_ci95']:.2f} -> "
              f"{'(smoke: not compared)' if smoke else verdict}")
    passed = all(r["agrees"] for r in rows)
    record = {"card": card.name, "title": card.title, "source": format_source(card), "smoke": smoke,
              "verdict": "smoke" if smoke else ("pass" if passed else "fail"), "settings": rows,
              "runs": [str(f) for f in folders], "wall_minutes": round((time.time() - started) / 60, 2),
              "date": time.strftime("%Y-%m-%d %H:%M"), **git_commit()}
    folder = RunFolder(folders[0], read_only=True)
    folder.hold()
    try:
        path = folder.write_record("reproduction.json", record)
    finally:
        folder.release()
    if smoke:
        print(f"{card.name}: the pipeline ran (debug=smoke); figures not compared -> {path}")
        return 0
    print(f"{card.name}: {'PASS' if passed else 'FAIL'}: {sum(r['agrees'] for r in rows)} of {len(rows)} settings agree "
          f"(the difference's 95% interval contains 0, on the card's episodes) -> {path}")
    return 0 if passed else 1


def tables(check_only: bool) -> int:
    """Regenerate (or, with --check, only compare) the record's tables; 1 when a document disagrees."""
    from metalearn import record

    if not check_only:
        for name in record.write():
            print(f"rewrote the generated tables of {name}")
    problems = record.check()
    for p in problems:
        print(p)
    if not problems:
        print(f"every generated table and every accuracy in {', '.join(record.DOCUMENTS)} agrees with "
              f"docs/results.yaml and the cards")
    return 1 if problems else 0


@console_script
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or any(a in ("--help", "-h") for a in argv):
        print(__doc__)
        return
    from metalearn.console import setup_logging

    setup_logging(None)
    try:
        if argv[0] == "list":
            show_list()
            return
        if argv[0] == "tables":
            sys.exit(tables(check_only="--check" in argv[1:]))
        force = "--force" in argv
        eval_only = "--eval-only" in argv
        rest = [a for a in argv[1:] if a not in ("--force", "--eval-only")]
        runs = None
        if eval_only:
            given = [a.split("=", 1)[1] for a in rest if a.startswith("run=")]
            if not given:
                raise MetalearnError("--eval-only needs run=<run folder> (an ensemble card: run=A,B,C in the card's order)")
            runs = [Path(p) for p in given[-1].split(",")]
            for r in runs:
                if not (r / "summary.json").is_file():
                    raise MetalearnError(f"run={r} is not a metalearn run folder (no summary.json)")
            rest = [a for a in rest if not a.startswith("run=")]
        bad = [a for a in rest if "=" not in a]
        if bad:
            raise MetalearnError(f"{bad[0]!r} is not a key=value override (metalearn-reproduce <card> [key=value ...] "
                                 f"[--force] [--eval-only run=PATH])")
        sys.exit(reproduce(argv[0], rest, force, runs))
    except MetalearnError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
