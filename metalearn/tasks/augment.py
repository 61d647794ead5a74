"""Pixel augmentation of training episodes: a small random affine per image, on the batch and the
device (never per image on the CPU). Class-making augmentations (Omniglot's 90-degree rotations)
live in the dataset instead; these only perturb examples within their class."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from metalearn.config import AugmentConfig, TTAConfig


def random_affine(x: torch.Tensor, cfg: AugmentConfig | TTAConfig, background: float) -> torch.Tensor:
    """x [..., C, H, W] -> each image rotated, scaled and shifted at random, then elastically distorted when
    cfg.elastic_alpha > 0; new pixels are background. One resampling for both."""
    shape = x.shape
    x = x.reshape(-1, *shape[-3:])
    n = x.shape[0]
    u = torch.rand(n, 4, device=x.device) * 2 - 1  # uses the (seeded, checkpointed) torch RNG
    angle = u[:, 0] * math.radians(cfg.rotate)
    scale = 1 + u[:, 1] * cfg.scale
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, u[:, 2] * 2 * cfg.shift], -1),
                         torch.stack([sin, cos, u[:, 3] * 2 * cfg.shift], -1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    alpha = cfg.elastic_alpha
    if alpha > 0:
        grid = grid + elastic_field(n, x.shape[-2], x.shape[-1], alpha, cfg.elastic_sigma, x.device).to(x.dtype)
    out = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + background
    return out.reshape(shape)


def elastic_field(n: int, height: int, width: int, alpha: float, sigma: float, device: torch.device) -> torch.Tensor:
    """Simard et al.'s displacement field [n, H, W, 2] in grid_sample's coordinates (-1..1 across the image):
    uniform(-1, 1) noise per pixel and axis, smoothed by a Gaussian of `sigma` pixels, times `alpha` pixels."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-t**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    noise = torch.rand(n * 2, 1, height, width, device=device) * 2 - 1
    smooth = F.conv2d(F.pad(noise, (radius, radius, 0, 0), mode="reflect" if radius < width else "replicate"),
                      kernel.view(1, 1, 1, -1))
    smooth = F.conv2d(F.pad(smooth, (0, 0, radius, radius), mode="reflect" if radius < height else "replicate"),
                      kernel.view(1, 1, -1, 1))
    pixels = alpha * smooth.view(n, 2, height, width).permute(0, 2, 3, 1)  # (dx, dy) in pixels
    return pixels * torch.tensor([2.0 / width, 2.0 / height], device=device)
