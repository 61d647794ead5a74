"""How a part declares its typed config: a dataclass registered in Hydra's ConfigStore (`@schema`), each field
with its default, its range or choices and one line of meaning beside it (`option`), checked by `check_values`.

Why field metadata and not a table keyed by strings: a bound then sits on the one field it bounds (a method's
temperature and another's are two fields with two meanings), a new key is one line, and `--help` can say what
every key means from the same declaration. Torch-free: `--help` and the command-line check load it.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


def config_dir() -> str:
    """The configs/ folder: inside the package in a wheel, at the repo root in a checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"metalearn configs not found next to {here}; reinstall the package")


# group -> part name -> its schema (a method's, a dataset's), and the ConfigStore nodes the YAML files extend
SCHEMAS: dict[str, dict[str, type]] = {"method": {}, "dataset": {}, "sampler": {}, "hardware": {}, "None": {}}
_NODES: list[tuple[str | None, str, type]] = []


def schema(group: str | None, node: str, *names: str):
    """Declare a dataclass the typed config of the parts `names` of `group`: the YAML files of the built-in
    parts extend `node` (`<name>_schema`); a part defined elsewhere (a test, a plugin) can name its node after
    itself and needs no YAML (`@schema("method", "mine", "mine")`, then `method=mine`)."""
    def declare(cls: type) -> type:
        SCHEMAS.setdefault(str(group), {}).update(dict.fromkeys(names, cls))
        _NODES.append((group, node, cls))
        ConfigStore.instance().store(group=group, name=node, node=cls)
        return cls

    return declare


def register() -> None:
    """Put back any schema the ConfigStore lost (declaring one stores it; a launcher may hand a job a fresh
    store). Storing converts the dataclass again, ~0.1 s for all of them, so a present node is kept."""
    from hydra.core.object_type import ObjectType

    cs = ConfigStore.instance()
    for group, node, cls in _NODES:
        if cs.get_type(f"{group}/{node}.yaml" if group else f"{node}.yaml") != ObjectType.CONFIG:
            cs.store(group=group, name=node, node=cls)


def option(default: Any = MISSING, help: str = "", *, low: float | None = None, high: float | None = None,
           choices: tuple[str, ...] | None = None, factory: Any = None) -> Any:
    """A config field with its meaning (`help`), its range (`low`..`high`, inclusive; an exclusive bound is written
    as the nearest valid value, e.g. 1e-12 for > 0) or its `choices`. `factory` for a list or nested default."""
    meta = {"help": help, "low": low, "high": high, "choices": choices}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - a schema defined in a test with local names: no nested schemas then
        return {}


def _node_schema(cls: type, name: str, value: Any) -> type | None:
    """The schema of a field's value: its declared dataclass type, or (for `dataset` and `method`, typed Any) the
    schema its `name` picks."""
    hint = _hints(cls).get(name)
    for candidate in typing.get_args(hint) or (hint,):
        if dataclasses.is_dataclass(candidate):
            return candidate
    if name in ("dataset", "method") and isinstance(value, dict):
        return SCHEMAS[name].get(value.get("name"))
    return None


def declared(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """Every field of `cls` and of its nested schemas, as (dotted key, field)."""
    out = []
    for f in dataclasses.fields(cls):
        out.append((prefix + f.name, f))
        nested = _node_schema(cls, f.name, None)
        if nested is not None:
            out += declared(nested, f"{prefix}{f.name}.")
    return out


def check_values(cfg: Any, cls: type | None = None, prefix: str = "") -> None:
    """Every declared range and choice of `cls` (default: cfg's own schema) holds in cfg, or one MetalearnError
    naming the key, its value and what it may be. `prefix`: where cfg sits in the whole config ("method." for a
    method's own config). A key cfg lacks (an older run's config) is skipped."""
    from metalearn.errors import MetalearnError

    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cls, cfg = cls or type(cfg), OmegaConf.structured(cfg)
    data = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    cls = cls or (OmegaConf.get_type(cfg) if OmegaConf.is_config(cfg) else None)
    if cls is None or not dataclasses.is_dataclass(cls):
        return
    _check(data, cls, prefix, MetalearnError)


def _check(data: dict, cls: type, prefix: str, error: type) -> None:
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        key, value = prefix + f.name, data[f.name]
        low, high, choices = f.metadata.get("low"), f.metadata.get("high"), f.metadata.get("choices")
        values = value if isinstance(value, list | tuple) else [value]
        if low is not None or high is not None:
            for v in values:
                if v is None or isinstance(v, bool) or not isinstance(v, int | float):
                    continue
                if v != v or (low is not None and v < low) or (high is not None and v > high):
                    rng = (f">= {low}" if high is None else f"between {low} and {high}") if low is not None else f"<= {high}"
                    raise error(f"{key}={value} is out of range ({f.metadata['help']}); give {key}= a value {rng}")
        if choices is not None and value is not None and value not in choices:
            raise error(f"{key}={value!r} is not one of: {', '.join(choices)}")
        nested = _node_schema(cls, f.name, value)
        if nested is not None and isinstance(value, dict):
            _check(value, nested, f"{key}.", error)


def choices_of(cls: type, name: str) -> tuple[str, ...]:
    """The declared choices of field `name` of `cls`."""
    return next(f.metadata["choices"] for f in dataclasses.fields(cls) if f.name == name)
