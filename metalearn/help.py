"""`--help` for the console scripts, answered from the config folder and one composition.

Why not Hydra's own --help: it lists the config groups by deep-copying its whole config
repository once per group and option list (84 copies here), 1.5 s of a 2 s start-up. The same
page built here takes one composition (~0.15 s). `--hydra-help` still shows Hydra's flags.
"""

from __future__ import annotations

import sys
from pathlib import Path

HELP_FLAGS = ("--help", "-h")


def wants_help(argv: list[str]) -> bool:
    return any(a in HELP_FLAGS for a in argv)


NOT_GROUPS = ("cards",)  # folders of configs/ that are not Hydra groups (metalearn-reproduce's cards)


def config_groups(root: Path) -> dict[str, list[str]]:
    """group -> its options, read from the YAML files under the config folder."""
    groups = {}
    for d in sorted(p for p in root.rglob("*") if p.is_dir() and p.relative_to(root).parts[0] not in NOT_GROUPS):
        options = sorted(f.stem for f in d.glob("*.yaml"))
        if options:
            groups[d.relative_to(root).as_posix()] = options
    return groups


def help_text(app: str, config_name: str, overrides: list[str], intro: str) -> str:
    """The help page: what the tool does, its config groups and options, and the config these
    overrides compose (so `metalearn-train method=maml --help` shows MAML's settings)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from metalearn.config import config_dir, register

    register()
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        cfg = compose(config_name=config_name, overrides=overrides)
    text = f"{intro.strip()}\n\n"
    if config_name == "train":  # metalearn-eval composes no group: its keys are all it takes
        groups = "\n".join(f"{g}: {', '.join(o)}" for g, o in config_groups(Path(config_dir())).items())
        text += f"== Configuration groups ==\nCompose your configuration from these groups (group=option)\n\n{groups}\n\n"
    from metalearn.config import EvalConfig, TrainConfig

    schema = TrainConfig if config_name == "train" else EvalConfig
    data = OmegaConf.to_container(cfg, resolve=False)
    lines = "\n".join(key_lines(data, schema))
    return (text + f"== Keys ==\nkey=value on the command line; each key with its value in this configuration, its range "
            f"or choices, and what it does\n\n{lines}\n\n"
            f"The composed config as YAML: {app} {' '.join(overrides)} --cfg job. "
            f"Hydra's own flags (--multirun, ...): {app} --hydra-help\n")


def describe(field) -> tuple[str, str]:
    """A declared field's range or choices, and its meaning."""
    meta = field.metadata
    low, high, choices = meta.get("low"), meta.get("high"), meta.get("choices")
    if choices:
        rng = "|".join(str(c) for c in choices)
    elif low is not None and high is not None:
        rng = f"{low:g}..{high:g}"
    elif low is not None:
        rng = f">= {low:g}"
    elif high is not None:
        rng = f"<= {high:g}"
    else:
        rng = ""
    return rng, meta.get("help", "")


def key_lines(data: dict, schema: type, prefix: str = "") -> list[str]:
    """One line per key of the composed config, from its schema's declarations (metalearn/config/): the key, its
    value here, its range or choices and its meaning. A key with no declared meaning is marked, and a test fails
    on it, so every key is explained where it is declared, once."""
    import dataclasses

    from metalearn.config.schema import _node_schema

    out = []
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for name, f in fields.items():
        value = data.get(name) if isinstance(data, dict) else None
        nested = _node_schema(schema, name, value)
        rng, meaning = describe(f)
        if nested is not None and not isinstance(value, list):
            out += key_lines(value if isinstance(value, dict) else {}, nested, f"{prefix}{name}.")
            continue
        if nested is not None:  # a list of entries (test.extra): the list, then each entry's keys
            out.append(f"  {prefix}{name}={value}  {meaning or MISSING_MEANING}")
            out += key_lines({}, nested, f"{prefix}{name}[].")
            continue
        if name == "name" and prefix in ("dataset.", "method."):
            meaning = meaning or f"which {prefix[:-1]} (chosen with {prefix[:-1]}=NAME)"
        shown = "null" if value is None else (str(value) if not isinstance(value, str) else value or "''")
        out.append(f"  {prefix}{name}={shown}" + (f"  [{rng}]" if rng else "") + f"  {meaning or MISSING_MEANING}")
    return out


MISSING_MEANING = "(no meaning declared)"


def answer_help(app: str, config_name: str, intro: str, argv: list[str] | None = None) -> bool:
    """Print the help page and return True when argv asks for it; a bad override is one line, exit 2."""
    argv = sys.argv[1:] if argv is None else argv
    if not wants_help(argv):
        return False
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        text = help_text(app, config_name, overrides, intro)
    except Exception as e:  # Hydra's message names the bad override and the options
        print(f"{app}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.stdout.write(text)
    return True
