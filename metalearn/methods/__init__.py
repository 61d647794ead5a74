"""Method registry: config name -> constructor."""

from __future__ import annotations

from typing import Any

from metalearn.backbones import build_backbone
from metalearn.errors import MetalearnError
from metalearn.methods.base import Method

METHODS = ("protonet", "pixel_nn")


def build_method(cfg: Any, in_channels: int, channels_last: bool = False) -> Method:
    name = cfg.name
    if name == "protonet":
        from metalearn.methods.protonet import ProtoNet

        if cfg.distance not in ("sqeuclidean", "cosine"):
            raise MetalearnError(f"method.distance={cfg.distance!r} is not one of: sqeuclidean, cosine")
        return ProtoNet(build_backbone(cfg.backbone, in_channels, channels_last), cfg.distance)
    if name == "pixel_nn":
        from metalearn.methods.pixel_nn import PixelNN

        return PixelNN()
    raise MetalearnError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")


__all__ = ["METHODS", "Method", "build_method"]
