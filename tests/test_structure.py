"""The shape of the house, checked: the import graph has no cycle and no import runs back up the layers
(data -> tasks -> methods -> engine -> entry points), the console scripts stay thin, and no config module
grows past what one reader takes in."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "metalearn"

# Each module's layer, by its first name under metalearn/; a module may import its own layer or a lower one.
# The base holds what every layer uses (errors, files, the registry, the torch-free schemas, the console).
LAYERS: dict[str, int] = {
    "errors": 0, "files": 0, "registry": 0, "config": 0, "console": 0, "stats": 0, "optimizers": 0, "hardware": 0,
    "data": 1, "tasks": 2, "backbones": 3, "methods": 4, "readouts": 5, "loggers": 5, "support_index": 5, "engine": 6,
    # entry points: they compose, build and run; nothing below imports them
    "api": 7, "cli": 7, "help": 7, "preflight": 7, "sweep": 8, "train": 8, "eval": 8, "predict": 8, "export": 8,
    "report": 8, "reproduce": 8, "data_cli": 8, "record": 7, "cards": 7, "__init__": 8,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The metalearn modules `path` imports anywhere in it (function-level imports included); `from a import b`
    counts as importing a.b when a.b is a module, else a."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("metalearn")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("metalearn"):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if _exists(sub) else base)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        graph[name] = {m for m in imports_of(path) if m != name and _exists(m)}
    return graph


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan). A package's __init__ that re-exports its
    own modules is not a cycle with them: edges from a module to its own package's __init__ are left out."""
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                  if layer(d) > layer(m) and not m.startswith(d + "."))


def test_every_module_has_a_layer():
    unknown = sorted({m.split(".")[1] for m in import_graph() if "." in m} - set(LAYERS))
    assert not unknown, f"modules with no layer in LAYERS: {unknown}"


def test_the_imports_form_no_cycle():
    assert cycles(import_graph()) == []


def test_no_import_runs_back_up_the_layers():
    assert upward(import_graph()) == []


def test_the_checks_catch_what_they_look_for():
    """The checks themselves: a cycle and an upward edge in a made-up graph are found."""
    graph = {"metalearn.engine.a": {"metalearn.train"}, "metalearn.train": {"metalearn.engine.a"},
             "metalearn.methods.m": {"metalearn.engine.a"}}
    assert cycles(graph) == [["metalearn.engine.a", "metalearn.train"]]
    assert upward(graph) == ["metalearn.engine.a -> metalearn.train", "metalearn.methods.m -> metalearn.engine.a"]


def test_the_entry_points_stay_thin_and_the_engine_reads_no_method_key():
    """The engine labels a run by its method's name and reads none of a method's settings: each method builds
    what it needs (its training source, its teacher) from its own config."""
    assert len((PACKAGE / "train.py").read_text().splitlines()) <= 120
    for path in (PACKAGE / "engine").rglob("*.py"):
        assert re.findall(r"cfg\.method\.(?!name\b)\w+", path.read_text()) == [], path


def test_no_config_module_outgrows_one_reading():
    config_modules = [PACKAGE / "config.py"] if (PACKAGE / "config.py").exists() else []
    config_modules += list((PACKAGE / "config").rglob("*.py"))
    for path in config_modules:
        assert len(path.read_text().splitlines()) <= 250, path
