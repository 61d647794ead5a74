"""Method registry: config name -> constructor. Every method is built from its config, the image
shape and the number of training ways (the size of a classifier head, for methods that have one)."""

from __future__ import annotations

from typing import Any

from metalearn.backbones import build_backbone, feature_dim
from metalearn.errors import MetalearnError
from metalearn.methods.base import EmbeddingMethod, Method
from metalearn.methods.task_norm import BN_POLICIES

METHODS = ("protonet", "matching", "relation", "siamese", "baseline", "baselinepp", "pixel_nn",
           "maml", "fomaml", "anil", "metasgd", "mamlpp", "reptile", "meta_lstm", "mann")
MAML_FAMILY = ("maml", "fomaml", "anil", "metasgd", "mamlpp")


def _check(cfg: Any, key: str, allowed: tuple[str, ...]) -> None:
    if cfg[key] not in allowed:
        raise MetalearnError(f"method.{key}={cfg[key]!r} is not one of: {', '.join(allowed)}")


def build_method(cfg: Any, image_shape: tuple[int, int, int], ways: int, channels_last: bool = False,
                 train_classes: int | None = None) -> Method:
    """`ways`: the training episodes' way count; `train_classes`: the training split's class count
    (the pre-training head of the transfer baselines)."""
    method = _build(cfg, image_shape, ways, channels_last, train_classes)
    if "test_batch_norm" in cfg and isinstance(method, EmbeddingMethod):
        set_test_batch_norm(method, cfg.test_batch_norm)
    return method


def set_test_batch_norm(method: EmbeddingMethod, policy: str, key: str = "method.test_batch_norm") -> None:
    """The batch-norm statistics `method` normalises with at test time (metalearn.methods.task_norm);
    `key`: the option's name in the error for a bad policy."""
    if policy not in BN_POLICIES:
        raise MetalearnError(f"{key}={policy!r} is not one of: {', '.join(BN_POLICIES)}")
    method.batch_norm = policy


def _build(cfg: Any, image_shape: tuple[int, int, int], ways: int, channels_last: bool,
           train_classes: int | None) -> Method:
    name = cfg.name
    if name == "protonet":
        from metalearn.methods.protonet import ProtoNet

        _check(cfg, "distance", ("sqeuclidean", "cosine"))
        return ProtoNet(build_backbone(cfg.backbone, image_shape[0], channels_last), cfg.distance)
    if name == "matching":
        from metalearn.methods.matching import MatchingNet

        backbone = build_backbone(cfg.backbone, image_shape[0], channels_last)
        if cfg.fce_steps < 1:
            raise MetalearnError(f"method.fce_steps must be >= 1, got {cfg.fce_steps}")
        return MatchingNet(backbone, feature_dim(backbone, image_shape), cfg.fce, cfg.fce_steps, cfg.scale)
    if name == "relation":
        from metalearn.methods.relation import RelationNet

        _check(cfg, "loss", ("mse", "ce"))
        return RelationNet(build_backbone(cfg.backbone, image_shape[0], channels_last), image_shape, cfg.hidden, cfg.loss)
    if name == "siamese":
        from metalearn.methods.siamese import Siamese

        _check(cfg, "rule", ("max", "kernel"))
        backbone = build_backbone(cfg.backbone, image_shape[0], channels_last)
        if cfg.embedding < 0:
            raise MetalearnError(f"method.embedding must be >= 0 (0: no fully connected layer), got {cfg.embedding}")
        return Siamese(backbone, feature_dim(backbone, image_shape), cfg.rule, cfg.embedding)
    if name in ("baseline", "baselinepp"):
        from metalearn.methods.baseline import Baseline

        if train_classes is None:
            raise MetalearnError(f"{name} needs the number of training classes to size its pre-training head")
        if cfg.finetune_steps < 1 or cfg.finetune_lr <= 0:
            raise MetalearnError(f"method.finetune_steps must be >= 1 and method.finetune_lr > 0, got "
                                 f"{cfg.finetune_steps} and {cfg.finetune_lr}")
        backbone = build_backbone(cfg.backbone, image_shape[0], channels_last)
        return Baseline(backbone, feature_dim(backbone, image_shape), train_classes, name == "baselinepp",
                        cfg.finetune_steps, cfg.finetune_lr)
    if name == "pixel_nn":
        from metalearn.methods.pixel_nn import PixelNN

        return PixelNN()
    if name == "meta_lstm":
        from metalearn.methods.meta_lstm import MetaLSTM

        if cfg.inner_steps < 1 or cfg.inner_steps_eval < 1:
            raise MetalearnError(f"method.inner_steps and method.inner_steps_eval must be >= 1, "
                                 f"got {cfg.inner_steps} and {cfg.inner_steps_eval}")
        backbone = build_backbone(cfg.backbone, image_shape[0], channels_last, bn_running_stats=False)
        return MetaLSTM(backbone, feature_dim(backbone, image_shape), ways, cfg.inner_steps, cfg.inner_steps_eval,
                        cfg.hidden)
    if name == "mann":
        from torch import nn

        from metalearn.methods.mann import MANN

        _check(cfg, "encoder", ("pixels", "conv"))
        _check(cfg, "loss_on", ("sequence", "queries"))
        _check(cfg, "write", ("add", "key"))
        if cfg.aux_weight < 0:
            raise MetalearnError(f"method.aux_weight must be >= 0 (0: no auxiliary loss), got {cfg.aux_weight}")
        if cfg.aux_weight > 0 and cfg.encoder == "pixels":
            raise MetalearnError("method.aux_weight trains the encoder, and method.encoder=pixels has none; "
                                 "use method.encoder=conv or method.aux_weight=0")
        if cfg.label_slots and cfg.label_slots < ways:
            raise MetalearnError(f"method.label_slots={cfg.label_slots} is narrower than the {ways}-way training tasks "
                                 f"(sampler.train_ways); use 0 (as wide as the tasks) or >= {ways}")
        if cfg.label_slots > ways and cfg.loss_on == "queries":
            raise MetalearnError("method.label_slots wider than sampler.train_ways needs method.loss_on=sequence")
        ways = cfg.label_slots or ways
        encoder = nn.Flatten() if cfg.encoder == "pixels" else build_backbone(cfg.backbone, image_shape[0], channels_last)
        dim = image_shape[0] * image_shape[1] * image_shape[2] if cfg.encoder == "pixels" else feature_dim(encoder, image_shape)
        return MANN(encoder, dim, ways, cfg.hidden, cfg.slots, cfg.width, cfg.heads, cfg.gamma, cfg.loss_on,
                    cfg.key_strength, cfg.normalize_input, cfg.write, cfg.aux_weight, cfg.project,
                    cfg.input_noise)
    if name in MAML_FAMILY or name == "reptile":
        _check(cfg, "batch_norm", ("transductive", "running"))
        backbone = build_backbone(cfg.backbone, image_shape[0], channels_last, cfg.batch_norm == "running")
        dim = feature_dim(backbone, image_shape)
        if cfg.inner_steps < 1 or cfg.inner_steps_eval < 1:
            raise MetalearnError(f"method.inner_steps and method.inner_steps_eval must be >= 1, "
                                 f"got {cfg.inner_steps} and {cfg.inner_steps_eval}")
        if name == "reptile":
            from metalearn.methods.reptile import Reptile

            _check(cfg, "inner_optimizer", ("adam", "sgd"))
            _check(cfg, "inner_state", ("persistent", "fresh"))
            return Reptile(backbone, dim, ways, cfg.inner_lr, cfg.inner_steps, cfg.inner_steps_eval, cfg.inner_batch,
                           cfg.inner_optimizer, cfg.inner_state)
        from metalearn.methods.maml import MAML, MAMLPlusPlus

        _check(cfg, "adapt", ("all", "head"))
        _check(cfg, "task_batching", ("auto", "loop", "vmap", "split"))
        plus = MAMLPlusPlus(**{k: cfg.plus[k] for k in cfg.plus})
        return MAML(backbone, dim, ways, cfg.inner_lr, cfg.inner_steps, cfg.inner_steps_eval, cfg.first_order,
                    cfg.adapt == "head", cfg.learn_inner_lr, name=name, plus=plus, task_batching=cfg.task_batching)
    raise MetalearnError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")


__all__ = ["METHODS", "Method", "build_method"]
