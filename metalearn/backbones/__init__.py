"""Backbones: plain nn.Modules, usable directly and through torch.func.functional_call."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from metalearn.config import BackboneConfig
from metalearn.errors import MetalearnError
from metalearn.registry import BACKBONES


class BatchStatNorm2d(nn.BatchNorm2d):
    """Batch-norm that always normalises with the batch's own statistics (transductive, as the reference
    MAML code). Outside torch.func.vmap it is the fused kernel (1.4x faster MAML with 15 queries per class,
    measured); under vmap (see `vmap_safe`) it is written out in plain tensor ops, whose second derivatives
    are right there, where the fused kernel's are not (measured: a few percent off in MAML's meta-gradient)."""

    def __init__(self, channels: int):
        super().__init__(channels, track_running_stats=False)
        self.fused = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return nn.functional.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        scale = self.weight * torch.rsqrt(var + self.eps)  # per-channel, so one multiply-add on the big tensor
        return torch.addcmul((self.bias - mean * scale)[:, None, None], x, scale[:, None, None])


@contextmanager
def vmap_safe(model: nn.Module) -> Iterator[None]:
    """Within this block `model` runs correctly under torch.func.vmap: batch-norm in plain ops (see
    BatchStatNorm2d) and no memory-format conversion (vmap cannot reorder memory inside its transform;
    the batched convolution picks its own layout)."""
    switches = [(m, "channels_last", False) for m in model.modules() if getattr(m, "channels_last", False)]
    switches += [(m, "fused", False) for m in model.modules() if isinstance(m, BatchStatNorm2d)]
    switches += [(m, "under_vmap", True) for m in model.modules() if hasattr(m, "under_vmap")]
    for m, attr, value in switches:
        setattr(m, attr, value)
    try:
        yield
    finally:
        for m, attr, value in switches:
            setattr(m, attr, not value)


def run_layers(features: nn.Sequential, x: torch.Tensor, channels_last: bool, under_vmap: bool) -> torch.Tensor:
    """The conv tower's layers in the layout asked for. Under vmap on the CPU the 1-channel first
    convolution runs as patches x weight (`patch_conv`): the tasks' batched weights then make one
    batched matrix product instead of a grouped convolution (measured, MAML 1 query/class under vmap,
    2 threads: 142-151 to 160-179 tasks/s)."""
    if channels_last:
        return run_channels_last(features, x)
    if not (under_vmap and x.device.type == "cpu"):
        return features(x)
    for layer in features:
        patch = isinstance(layer, nn.Conv2d) and layer.in_channels == 1 and patch_conv_applies(layer)
        x = patch_conv(layer, x) if patch else layer(x)
    return x


def run_channels_last(features: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run `features` with every activation in channels_last. Converting the input is not enough: a
    1-channel image (Omniglot) is laid out the same in both formats, so the first convolution returns
    NCHW and the layers after it mix layouts, where ReLU's backward alone runs about 50x slower
    (measured: MAML's 15-query step spent 17% of its time there). The conversion after each
    convolution is a no-op except after that first one."""
    x = x.contiguous(memory_format=torch.channels_last)
    for layer in features:
        if isinstance(layer, nn.Conv2d) and layer.in_channels == 1 and patch_conv_applies(layer):
            x = patch_conv(layer, x)
        else:
            x = layer(x)
        if isinstance(layer, nn.Conv2d):
            x = x.contiguous(memory_format=torch.channels_last)
    return x


def patch_conv_applies(conv: nn.Conv2d) -> bool:
    return conv.groups == 1 and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)


def patch_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) as image patches times the weight matrix, returned channels_last. Why, for a 1-channel
    input: oneDNN's convolution returns NCHW there (a layout copy follows) and its weight gradient is
    slow (measured on Omniglot's 75 x 1 x 28 x 28 query batch: 5.0 ms forward+backward vs 1.1 ms this
    way, 1 thread). The product of a [N*H'*W', k*k] patch matrix with the [k*k, C] weight is already
    N, H', W', C in memory, i.e. channels_last, and every op here has plain (double) derivatives."""
    n, _, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cols = nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # [N, k*k, H'*W']
    cols = cols.transpose(1, 2).reshape(n * ho * wo, kh * kw)
    weight = conv.weight.reshape(conv.out_channels, kh * kw).t().contiguous()  # row-major: the fast weight gradient
    out = cols @ weight if conv.bias is None else torch.addmm(conv.bias, cols, weight)
    return out.view(n, ho, wo, conv.out_channels).permute(0, 3, 1, 2)


def batch_norm_2d(running_stats: bool) -> Callable[[int], nn.Module]:
    """The backbones' batch-norm layer. running_stats=False: always normalise with the batch's own
    statistics (transductive), as the reference MAML code does; True: running statistics at test time."""
    return nn.BatchNorm2d if running_stats else BatchStatNorm2d


class Conv4(nn.Module):
    """Four 3x3 conv blocks (conv, batch-norm, ReLU) with max-pooling (Snell et al.) or
    stride 2 and a final spatial mean (Finn et al.). Output: a flat embedding.
    stem > 0 puts one more block of `stem` channels first, for images of twice the usual size (56-px
    Omniglot): its half-size output of `stem` maps, not one grey map, is what the four blocks then read, so
    detail a 28-px image loses can reach them. Measured with stem=16 at width 96: a training step with the
    56-px augmentation takes 1.75x the 28-px one, and on Omniglot it lost on a held-out alphabet
    (docs/results.md), so no preset uses it."""

    def __init__(self, in_channels: int = 1, width: int = 64, pool: str = "max", channels_last: bool = False,
                 bn_running_stats: bool = True, stem: int = 0):
        super().__init__()
        if pool not in ("max", "stride"):
            raise MetalearnError(f"method.backbone.pool={pool!r} is not one of: max, stride")
        bn = batch_norm_2d(bn_running_stats)
        blocks = []
        widths = [stem] * (stem > 0) + [width] * 4
        for i, c_out in enumerate(widths):
            c_in = in_channels if i == 0 else widths[i - 1]
            if pool == "max":
                blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), bn(c_out), nn.ReLU(), nn.MaxPool2d(2)]
            else:
                blocks += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), bn(c_out), nn.ReLU()]
        self.features = nn.Sequential(*blocks)
        self.pool, self.channels_last, self.under_vmap = pool, channels_last, False

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        return run_layers(self.features, x, self.channels_last, self.under_vmap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feature_maps(x)
        return x.mean(dim=(2, 3)) if self.pool == "stride" else x.flatten(1)


class RelationConv4(nn.Module):
    """The embedding module of Relation Networks (Sung et al. 2018): four 3x3 conv blocks, the first
    two unpadded and max-pooled, the last two padded and not pooled, so that a spatial map is left
    for the relation module to compare (64 x 5 x 5 for 28x28 Omniglot, 64 x 19 x 19 for 84x84)."""

    def __init__(self, in_channels: int = 1, width: int = 64, channels_last: bool = False,
                 bn_running_stats: bool = True):
        super().__init__()
        bn = batch_norm_2d(bn_running_stats)
        blocks: list[nn.Module] = []
        for i in range(4):
            c_in = in_channels if i == 0 else width
            blocks += [nn.Conv2d(c_in, width, 3, padding=0 if i < 2 else 1), bn(width), nn.ReLU()]
            if i < 2:
                blocks.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*blocks)
        self.channels_last, self.under_vmap = channels_last, False

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        return run_layers(self.features, x, self.channels_last, self.under_vmap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_maps(x).flatten(1)


@BACKBONES.register("conv4")
def _conv4(cfg: BackboneConfig, in_channels: int, channels_last: bool, bn_running_stats: bool) -> nn.Module:
    return Conv4(in_channels, cfg.width, cfg.pool, channels_last, bn_running_stats, cfg.stem)


@BACKBONES.register("conv4_relation")
def _conv4_relation(cfg: BackboneConfig, in_channels: int, channels_last: bool, bn_running_stats: bool) -> nn.Module:
    return RelationConv4(in_channels, cfg.width, channels_last, bn_running_stats)


def build_backbone(cfg: BackboneConfig, in_channels: int, channels_last: bool = False,
                   bn_running_stats: bool = True) -> nn.Module:
    if cfg.stem and cfg.name != "conv4":
        raise MetalearnError(f"method.backbone.stem={cfg.stem} adds a first block to conv4 only, and this backbone is "
                             f"{cfg.name}; drop method.backbone.stem or use method.backbone.name=conv4")
    model = BACKBONES.builder(cfg.name)(cfg, in_channels, channels_last, bn_running_stats)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def feature_dim(backbone: nn.Module, image_shape: tuple[int, int, int]) -> int:
    """The embedding size the backbone gives for images of this shape."""
    was = backbone.training
    backbone.eval()
    with torch.no_grad():
        d = backbone(torch.zeros(2, *image_shape)).shape[1]
    backbone.train(was)
    return int(d)
