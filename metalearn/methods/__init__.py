"""Methods: each module of this package registers its builder (metalearn.registry.METHODS) and holds its
algorithm; its typed config is a schema in metalearn/config.py. Every method is built from its config and a
BuildContext (the image shape, the training ways, the training classes)."""

from __future__ import annotations

from typing import Any

from metalearn.config import SCHEMAS, TEST_BATCH_NORMS, check_values
from metalearn.errors import MetalearnError
from metalearn.methods.base import BuildContext, EmbeddingMethod, Method
from metalearn.registry import METHODS


def build_method(cfg: Any, image_shape: tuple[int, int, int], ways: int, channels_last: bool = False,
                 train_classes: int | None = None, shots: int | None = None) -> Method:
    """`ways`, `shots`: the training episodes' way and shot counts; `train_classes`: the training split's class
    count (the pre-training head of the transfer baselines)."""
    check_values(cfg, SCHEMAS["method"].get(cfg.name), prefix="method.")
    method = METHODS.builder(cfg.name)(cfg, BuildContext(tuple(image_shape), ways, channels_last, train_classes, shots))
    method.name = cfg.name  # the name it was built by: what logs and summaries call it
    if "test_batch_norm" in cfg and isinstance(method, EmbeddingMethod):
        set_test_batch_norm(method, cfg.test_batch_norm)
    return method


def set_test_batch_norm(method: EmbeddingMethod, policy: str, key: str = "method.test_batch_norm") -> None:
    """The batch-norm statistics `method` normalises with at test time (metalearn.methods.task_norm);
    `key`: the option's name in the error for a bad policy."""
    allowed = TEST_BATCH_NORMS
    if policy not in allowed:
        raise MetalearnError(f"{key}={policy!r} is not one of: {', '.join(allowed)}")
    method.batch_norm = policy


__all__ = ["METHODS", "Method", "build_method"]
