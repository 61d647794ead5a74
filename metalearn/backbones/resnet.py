"""The residual backbones of today's few-shot papers: ResNet-12, WRN-28-10 and ResNet-18.

Each is a plain nn.Module ending in a global average pool (a flat embedding), built at the papers' size
at `method.backbone.width=64` and scaled in proportion at other widths (`debug=smoke` uses 16):

- ``resnet12``: the 64-160-320-640 ResNet-12 of TADAM (Oreshkin et al. 2018) and MetaOptNet (Lee et al.
  2019): four residual blocks of three 3x3 convolutions (batch norm, leaky ReLU 0.1) with a 1x1 projected
  shortcut, each followed by 2x2 max-pooling; DropBlock (Ghiasi et al. 2018, block 5) after the last two
  blocks and dropout after the first two, at `method.backbone.drop_rate` (0.1 as MetaOptNet). 12,424,320
  parameters for RGB input (the 12.4M the literature quotes; counted in tests/test_backbones.py).
- ``wrn28_10``: the Wide ResNet-28-10 of Zagoruyko & Komodakis 2016 (as used by LEO and S2M2): three
  groups of four pre-activation basic blocks, 160-320-640 channels, strides 1-2-2. 36,472,784 parameters
  without the classifier, the paper's 36.5M less its 6,410-parameter CIFAR-10 layer.
- ``resnet18``: He et al. 2016's ResNet-18 (7x7 stem, four stages of two basic blocks, 64-512 channels), as
  Chen et al. 2019 use it: 11,176,512 parameters, torchvision's resnet18 without its 1000-class layer.
"""

from __future__ import annotations

import torch
from torch import nn

from metalearn.backbones import batch_norm_2d
from metalearn.config import BackboneConfig
from metalearn.errors import MetalearnError
from metalearn.registry import BACKBONES


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al. 2018): drops square blocks of a feature map, not single units, so that
    neighbouring (correlated) activations cannot stand in for a dropped one. In training, block centres are
    drawn with the rate gamma that drops about `drop_rate` of the units, and the kept ones are rescaled."""

    def __init__(self, drop_rate: float, block_size: int):
        super().__init__()
        self.drop_rate, self.block_size = drop_rate, block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_rate <= 0:
            return x
        _, _, h, w = x.shape
        size = min(self.block_size, h, w)
        valid = (h - size + 1) * (w - size + 1)
        gamma = self.drop_rate * h * w / (size * size * valid)
        centres = torch.zeros_like(x)
        centres[:, :, size // 2: h - (size - 1) // 2, size // 2: w - (size - 1) // 2] = (
            torch.rand(x.shape[0], x.shape[1], h - size + 1, w - size + 1, device=x.device) < gamma).to(x.dtype)
        dropped = nn.functional.max_pool2d(centres, size, stride=1, padding=size // 2)[:, :, :h, :w]
        keep = 1.0 - dropped
        return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))


class ResNet12Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, bn, drop: nn.Module):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), bn(c_out), nn.LeakyReLU(0.1),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), bn(c_out), nn.LeakyReLU(0.1),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), bn(c_out))
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), bn(c_out))
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(nn.Module):
    def __init__(self, in_channels: int, width: int = 64, drop_rate: float = 0.1, block_size: int = 5,
                 bn_running_stats: bool = True, global_pool: bool = True):
        super().__init__()
        self.global_pool = global_pool  # False: the flattened last map, MetaOptNet's 640 x 5 x 5 = 16,000 at 84x84
        bn = batch_norm_2d(bn_running_stats)
        channels = [round(width * m) for m in (1, 2.5, 5, 10)]  # 64-160-320-640 at width 64
        blocks, c_in = [], in_channels
        for i, c in enumerate(channels):
            drop = DropBlock(drop_rate, block_size) if i >= 2 else nn.Dropout(drop_rate)
            blocks.append(ResNet12Block(c_in, c, bn, drop))
            c_in = c
        self.features = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(x)
        return maps.mean(dim=(2, 3)) if self.global_pool else maps.flatten(1)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] before the pool, for the methods that compare maps (Relation Networks)."""
        return self.features(x)


class WideBlock(nn.Module):
    """A pre-activation basic block (BN, ReLU, conv, BN, ReLU, conv) with a 1x1 shortcut where the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, bn):
        super().__init__()
        self.pre = nn.Sequential(bn(c_in), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), bn(c_out), nn.ReLU(),
                                  nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False))
        self.shortcut = (nn.Conv2d(c_in, c_out, 1, stride, bias=False)
                         if stride != 1 or c_in != c_out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pre(x)
        return self.body(a) + (x if self.shortcut is None else self.shortcut(a))


class WideResNet(nn.Module):
    def __init__(self, in_channels: int, depth: int = 28, widen: int = 10, width: int = 64,
                 bn_running_stats: bool = True):
        super().__init__()
        if (depth - 4) % 6:
            raise MetalearnError(f"a Wide ResNet's depth is 6n+4, got {depth}")
        n, scale = (depth - 4) // 6, width / 64
        bn = batch_norm_2d(bn_running_stats)
        stem, groups = round(16 * scale), [round(16 * widen * m * scale) for m in (1, 2, 4)]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)]
        c_in = stem
        for c, stride in zip(groups, (1, 2, 2), strict=True):
            for b in range(n):
                layers.append(WideBlock(c_in, c, stride if b == 0 else 1, bn))
                c_in = c
        layers += [bn(c_in), nn.ReLU()]
        self.features = nn.Sequential(*layers)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] before the pool, for the methods that compare maps (Relation Networks)."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, bn):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), bn(c_out), nn.ReLU(),
                                  nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), bn(c_out))
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), bn(c_out))
                         if stride != 1 or c_in != c_out else nn.Identity())
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, in_channels: int, width: int = 64, bn_running_stats: bool = True):
        super().__init__()
        bn = batch_norm_2d(bn_running_stats)
        channels = [round(width * m) for m in (1, 2, 4, 8)]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 7, 2, 3, bias=False), bn(channels[0]),
                                   nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        c_in = channels[0]
        for i, c in enumerate(channels):
            layers += [BasicBlock(c_in, c, 1 if i == 0 else 2, bn), BasicBlock(c, c, 1, bn)]
            c_in = c
        self.features = nn.Sequential(*layers)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] before the pool, for the methods that compare maps (Relation Networks)."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


@BACKBONES.register("resnet12")
def _resnet12(cfg: BackboneConfig, in_channels: int, channels_last: bool, bn_running_stats: bool) -> nn.Module:
    return ResNet12(in_channels, cfg.width, cfg.drop_rate, cfg.block_size, bn_running_stats, cfg.global_pool)


@BACKBONES.register("wrn28_10")
def _wrn28_10(cfg: BackboneConfig, in_channels: int, channels_last: bool, bn_running_stats: bool) -> nn.Module:
    return WideResNet(in_channels, 28, 10, cfg.width, bn_running_stats)


@BACKBONES.register("resnet18")
def _resnet18(cfg: BackboneConfig, in_channels: int, channels_last: bool, bn_running_stats: bool) -> nn.Module:
    return ResNet18(in_channels, cfg.width, bn_running_stats)
