"""Saved run configs from older metalearn versions, brought up to today's schemas: renamed keys moved, new keys
filled with their defaults (and named, since a new option's default is not always the old behaviour)."""

from __future__ import annotations

from omegaconf import OmegaConf

from metalearn.config.hardware import HardwareConfig
from metalearn.config.methods import EmbeddingMethodConfig
from metalearn.config.run import SamplerConfig, TrainConfig
from metalearn.config.schema import SCHEMAS

# Keys renamed since runs were first saved: (old, new) under `method`, for the methods of a schema. An embedding
# method's test-time statistics were `method.batch_norm` until 2026-12, the name the MAML family and Reptile
# keep for their build-time batch-norm mode; one name now has one meaning.
RENAMED_METHOD_KEYS: dict[type, list[tuple[str, str]]] = {EmbeddingMethodConfig: [("batch_norm", "test_batch_norm")]}


def migrate_saved_config(saved: dict) -> dict:
    """A saved config with keys renamed since it was written moved to their new names (a run folder from
    before a rename still evaluates and resumes)."""
    method = saved.get("method")
    if not isinstance(method, dict):
        return saved
    method, cls = dict(method), SCHEMAS["method"].get(method.get("name"))
    for base, renames in RENAMED_METHOD_KEYS.items():
        for old, new in renames if cls is not None and issubclass(cls, base) else []:
            if old in method and new not in method:
                method[new] = method.pop(old)
    return {**saved, "method": method}


def complete_saved_config(saved: dict) -> tuple[dict, list[str]]:
    """A run's saved config with the keys added to the schemas since it was written filled in with their
    defaults, so runs made by an older metalearn still load; returns it and the dotted keys filled (to warn
    about: a new option's default is not always the behaviour the old run had)."""
    defaults = {"sampler": SamplerConfig, "hardware": HardwareConfig,
                "method": SCHEMAS["method"].get(saved.get("method", {}).get("name")),
                "dataset": SCHEMAS["dataset"].get(saved.get("dataset", {}).get("name"))}
    base = {k: v for k, v in OmegaConf.to_container(OmegaConf.structured(TrainConfig)).items() if k not in defaults}
    base.update({k: OmegaConf.to_container(OmegaConf.structured(cls)) for k, cls in defaults.items() if cls is not None})
    filled: list[str] = []
    saved = migrate_saved_config(saved)

    def fill(into: dict, fresh: dict, prefix: str) -> dict:
        out = dict(into)
        for key, value in fresh.items():
            if key not in out:
                out[key] = value
                filled.append(prefix + key)
            elif isinstance(value, dict) and isinstance(out[key], dict):
                out[key] = fill(out[key], value, f"{prefix}{key}.")
        return out

    return fill(saved, base, ""), filled
