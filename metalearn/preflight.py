"""The command line checked before Hydra runs it: a bad override is one line and exit status 2.

Why here and not in Hydra: Hydra reports a composition error in several lines with exit status 1,
lists every option of a group (the internal `*_schema` entries too), accepts an unknown key when it
is written `+key=value` (its own hint for a misspelt key), and creates run_dir before any of our code
runs. The checks that need no composition run first; composing the command line (~0.1 s) is left to
Hydra, which does it anyway, and repeated here only when Hydra's fails, to say why in one line
(`run_checked`). A sweep is composed here first, each value, so a bad last value stops it before the
first job.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import OmegaConf

from metalearn.errors import MetalearnError, installed

# options that need a Hydra plugin from an optional extra: (group, option) -> (its module, its package)
# group options that need an extra: (group, option) -> (the module it imports, its package, the extra)
PLUGINS = {("launcher", "slurm"): ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
           ("launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher", "joblib"),
           **{("search", space): ("optuna", "optuna", "search")
              for space in ("metric", "gradient", "reptile", "transfer", "learned")}}


SKIP_FLAGS = ("--config-name", "-cn", "--config-dir", "-cd", "--config-path", "-cp", "--info", "-i",
              "--shell-completion", "-sc", "--hydra-help", "--version")


def config_options(root: Path) -> dict[str, list[str]]:
    """group -> the options a user may choose: the YAML files, and the ConfigStore's nodes that are not a
    YAML file's `*_schema` (a part registered in Python, e.g. a method defined in a test or a plugin)."""
    from hydra.core.config_store import ConfigStore

    from metalearn.help import NOT_GROUPS

    options = {d.name: {f.stem for f in d.glob("*.yaml")} for d in sorted(root.iterdir())
               if d.is_dir() and d.name not in NOT_GROUPS}
    store = ConfigStore.instance()
    for group in options:
        try:
            stored = store.list(group)
        except OSError:  # no node in this group
            stored = []
        options[group] |= {n.removesuffix(".yaml") for n in stored if not n.removesuffix(".yaml").endswith("_schema")}
    return {g: sorted(o) for g, o in options.items()}


def _closest(word: str, candidates: list[str]) -> str:
    near = difflib.get_close_matches(word, candidates, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(near)}?)" if near else ""


def _keys(cfg, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        out.append(prefix + str(k))
        if OmegaConf.is_dict(v):
            out += _keys(v, f"{prefix}{k}.")
    return out


def check_run_dir(value: str) -> None:
    """run_dir must be a folder or not exist yet, under folders: Hydra creates it before the run starts."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise MetalearnError(f"run_dir={value} is a file, not a folder; give a new or empty folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise MetalearnError(f"run_dir={value}: {parent} is a file, so no folder can be made under it; "
                                     f"give a path under a folder")
            if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
                raise MetalearnError(f"run_dir={value}: {parent} is not writable, so the run folder cannot be made; "
                                     f"give a path in a folder you can write to")
            break


def preflight(argv: list[str], config_name: str, compose_all: bool = True) -> None:
    """Raise MetalearnError for the first bad override of argv (a metalearn-train / -eval command line).
    compose_all=False: only what needs no composition (group options, `+key`, run_dir), unless argv sweeps."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from metalearn.config import config_dir, register

    if any(a.split("=", 1)[0] in SKIP_FLAGS for a in argv):
        return
    args = [a for a in argv if not a.startswith("-") and "=" in a]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except HydraException as e:
        raise MetalearnError(f"cannot parse the command line: {' '.join(str(e).split())}") from None
    root = Path(config_dir())
    groups = config_options(root) if config_name == "train" else {}
    single: list[str] = []  # each override once, a sweep by its first value, so one composition checks them all
    appended: list[str] = []
    others: list[tuple[int, str]] = []  # a sweep's other values: (its place in single, the override)
    for o in parsed:
        key = o.key_or_group
        if key.startswith("hydra.") or key == "hydra" or o.is_delete():
            continue
        if key in groups or key.lstrip("+") in groups:
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
            if o.is_add():  # every group is in metalearn-train's defaults already: Hydra would say "Multiple values"
                raise MetalearnError(f"+{key}={o.value()}: {key} is already a config group of {_app(config_name)}; "
                                     f"choose it without the plus: {key}={o.value()}")
            for v in values:
                if v is not None and str(v) not in groups[key]:
                    raise MetalearnError(f"{key}={v} is not a {key}; choose one of: {', '.join(groups[key])}"
                                         f"{_closest(str(v), groups[key])}")
                if v is not None and (key, str(v)) in PLUGINS and not installed(PLUGINS[key, str(v)][0]):
                    _, package, extra = PLUGINS[key, str(v)]
                    raise MetalearnError(f"{key}={v} needs the {package} package, which is not installed; "
                                         f"install it with pip install -e \".[{extra}]\" (or pip install {package})")
        elif o.is_add() or o.is_force_add():
            appended.append(key)
            continue
        if key == "run_dir" and not o.is_sweep_override() and o.value():
            check_run_dir(str(o.value()))
        if o.is_sweep_override():
            if o.value_type is not None and o.value_type.name in ("CHOICE_SWEEP", "SIMPLE_CHOICE_SWEEP", "RANGE_SWEEP"):
                values = [f"{o.get_key_element()}={v}" for v in list(o.sweep_string_iterator())[:20]]
                if values:
                    single.append(values[0])
                    others += [(len(single) - 1, v) for v in values[1:]]
            continue
        single.append(o.input_line)
    register()
    with initialize_config_dir(config_dir=str(root), version_base=None):

        def known() -> list[str]:  # the keys a message suggests from: composed only for a message (~0.1 s)
            return _keys(compose(config_name=config_name,
                                 overrides=[s for s in single if s.split("=", 1)[0] in groups]))

        for key in appended:
            raise MetalearnError(f"+{key}: no such key or config group, and metalearn does not add new keys"
                                 f"{_closest(key, known() + list(groups))}. "
                                 f"See the keys with `{_app(config_name)} --help`")
        if not (compose_all or others):
            return
        try:
            compose(config_name=config_name, overrides=single)
            for at, value in others:
                compose(config_name=config_name, overrides=[*single[:at], value, *single[at + 1:]])
        except Exception as e:  # noqa: BLE001 - Hydra and OmegaConf raise several kinds; each becomes one line
            detail = "\n".join(str(x) for x in (e, e.__cause__) if x is not None)
            raise MetalearnError(_one_line(detail, known(), config_name)) from None


def _app(config_name: str) -> str:
    return f"metalearn-{config_name}"


# keys renamed since users typed them: old key -> what to type now
RENAMED = {"head": "readout (readout=tim)", "tta.match": "readout (tta.match=chamfer is readout=chamfer)"}


def _one_line(message: str, known: list[str], config_name: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if lines and lines[0].startswith("Could not override '"):
        key = lines[0].split("'")[1]
        if key in RENAMED:
            return f"{key} is not a key since 2026-12-04: it is now {RENAMED[key]}"
        where = key.rsplit(".", 1)[0] if "." in key else None
        siblings = [k for k in known if (k.rsplit(".", 1)[0] if "." in k else None) == where]
        owner = f" of {where}" if where else ""
        return (f"{key} is not a key{owner}{_closest(key, known)}; its keys are: "
                f"{', '.join(k.rsplit('.', 1)[-1] for k in siblings)}")
    keep = [line for line in lines if not line.startswith(("To append", "object_type", "Set the environment"))]
    keep = list(dict.fromkeys(keep))  # the cause often repeats the message
    return " ".join(keep) + f" (see `{_app(config_name)} --help`)"


def run_preflight(argv: list[str], config_name: str, compose_all: bool = True) -> None:
    """Print `error: ...` and exit 2 on a bad command line."""
    try:
        preflight(argv, config_name, compose_all)
    except MetalearnError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


FULL_ERROR = "HYDRA_FULL_ERROR"
_full_error_before: list[str | None] = []  # the variable's value, kept while run_checked has it set


def run_checked(argv: list[str], config_name: str, hydra_main: Callable[[], object]) -> None:
    """A console script's Hydra main, its command line checked: the checks without composition first, then
    Hydra. Until the task function starts (task_started) Hydra raises its errors (HYDRA_FULL_ERROR) rather
    than printing them in several lines; such an error has the command line checked in full, which says
    in one line what is wrong with it (exit 2), or the error goes on. The task's own errors are not
    touched."""
    run_preflight(argv, config_name, compose_all=False)
    _full_error_before.append(os.environ.get(FULL_ERROR))
    os.environ[FULL_ERROR] = "1"
    try:
        hydra_main()
    except Exception:
        if _full_error_before:  # raised before the task started: composing or launching
            task_started()
            run_preflight(argv, config_name)
        raise
    finally:
        task_started()


def task_started() -> None:
    """The task function's first step: from here Hydra reports an error its own way (a bug's traceback)."""
    if _full_error_before:
        before = _full_error_before.pop()
        if before is None:
            os.environ.pop(FULL_ERROR, None)
        else:
            os.environ[FULL_ERROR] = before
