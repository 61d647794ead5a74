"""Backbones: plain nn.Modules, usable directly and through torch.func.functional_call."""

from __future__ import annotations

import torch
from torch import nn

from metalearn.config import BackboneConfig
from metalearn.errors import MetalearnError


class Conv4(nn.Module):
    """Four 3x3 conv blocks (conv, batch-norm, ReLU) with max-pooling (Snell et al.) or
    stride 2 and a final spatial mean (Finn et al.). Output: a flat embedding."""

    def __init__(self, in_channels: int = 1, width: int = 64, pool: str = "max", channels_last: bool = False,
                 bn_running_stats: bool = True):
        super().__init__()
        if pool not in ("max", "stride"):
            raise MetalearnError(f"method.backbone.pool={pool!r} is not one of: max, stride")
        # bn_running_stats=False: always normalise with the batch's own statistics (transductive),
        # as the reference MAML code does; True: running statistics at test time.
        def bn(c: int) -> nn.BatchNorm2d:
            return nn.BatchNorm2d(c, track_running_stats=bn_running_stats)

        blocks = []
        for i in range(4):
            c_in = in_channels if i == 0 else width
            if pool == "max":
                blocks += [nn.Conv2d(c_in, width, 3, padding=1), bn(width), nn.ReLU(), nn.MaxPool2d(2)]
            else:
                blocks += [nn.Conv2d(c_in, width, 3, stride=2, padding=1), bn(width), nn.ReLU()]
        self.features = nn.Sequential(*blocks)
        self.pool, self.channels_last = pool, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.features(x)
        return x.mean(dim=(2, 3)) if self.pool == "stride" else x.flatten(1)


def build_backbone(cfg: BackboneConfig, in_channels: int, channels_last: bool = False,
                   bn_running_stats: bool = True) -> nn.Module:
    if cfg.name == "conv4":
        model = Conv4(in_channels, cfg.width, cfg.pool, channels_last, bn_running_stats)
        return model.to(memory_format=torch.channels_last) if channels_last else model
    raise MetalearnError(f"method.backbone.name={cfg.name!r} is unknown; choose one of: conv4")


def feature_dim(backbone: nn.Module, image_shape: tuple[int, int, int]) -> int:
    """The embedding size the backbone gives for images of this shape."""
    was = backbone.training
    backbone.eval()
    with torch.no_grad():
        d = backbone(torch.zeros(2, *image_shape)).shape[1]
    backbone.train(was)
    return int(d)
