"""Pixel augmentation of training episodes: a small random affine per image, on the batch and the
device (never per image on the CPU). Class-making augmentations (Omniglot's 90-degree rotations)
live in the dataset instead; these only perturb examples within their class."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from metalearn.config import AugmentConfig, TTAConfig


def random_affine(x: torch.Tensor, cfg: AugmentConfig | TTAConfig, background: float) -> torch.Tensor:
    """x [..., C, H, W] -> each image rotated, scaled and shifted at random (and slanted and made wider or
    narrower when cfg.shear / cfg.aspect > 0), then elastically distorted when cfg.elastic_alpha > 0; new pixels
    are background. One resampling for all of it."""
    shape = x.shape
    x = x.reshape(-1, *shape[-3:])
    n = x.shape[0]
    u = torch.rand(n, 4, device=x.device) * 2 - 1  # uses the (seeded, checkpointed) torch RNG
    angle = u[:, 0] * math.radians(cfg.rotate)
    scale = 1 + u[:, 1] * cfg.scale
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, u[:, 2] * 2 * cfg.shift], -1),
                         torch.stack([sin, cos, u[:, 3] * 2 * cfg.shift], -1)], 1)
    if cfg.shear or cfg.aspect:  # drawn only when asked, so other settings keep their random streams
        v = torch.rand(n, 2, device=x.device) * 2 - 1
        hand = torch.zeros(n, 2, 2, device=x.device)  # sampling coordinates: x' = width * x + shear * y, y' = y
        hand[:, 0, 0], hand[:, 0, 1], hand[:, 1, 1] = 1 + v[:, 1] * cfg.aspect, v[:, 0] * cfg.shear, 1.0
        theta = torch.cat([theta[:, :, :2] @ hand, theta[:, :, 2:]], -1)
    theta = theta.to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    alpha = cfg.elastic_alpha
    if alpha > 0:
        grid = grid + elastic_field(n, x.shape[-2], x.shape[-1], alpha, cfg.elastic_sigma, x.device).to(x.dtype)
    out = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + background
    return out.reshape(shape)


def elastic_field(n: int, height: int, width: int, alpha: float, sigma: float, device: torch.device) -> torch.Tensor:
    """Simard et al.'s displacement field [n, H, W, 2] in grid_sample's coordinates (-1..1 across the image):
    uniform(-1, 1) noise per pixel and axis, smoothed by a Gaussian of `sigma` pixels, times `alpha` pixels.
    The separable smoothing is two small matrix products (10x faster on a CPU than a one-channel
    convolution, the same operator: tests/test_augment.py checks it against the padded convolution)."""
    noise = torch.rand(n * 2, height, width, device=device) * 2 - 1
    smooth = smoothing_matrix(height, sigma, device).T @ (noise @ smoothing_matrix(width, sigma, device))
    pixels = alpha * smooth.view(n, 2, height, width).permute(0, 2, 3, 1)  # (dx, dy) in pixels
    return pixels * torch.tensor([2.0 / width, 2.0 / height], device=device)


def smoothing_matrix(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    """M [size, size] with signal @ M = the signal convolved with a Gaussian of `sigma` (3 sigma wide),
    its edges padded by reflection (by replication when the kernel is wider than the signal)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-t**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    basis = torch.eye(size, device=device).unsqueeze(1)  # row j: the unit signal at j
    padded = F.pad(basis, (radius, radius), mode="reflect" if radius < size else "replicate")
    return F.conv1d(padded, kernel.view(1, 1, -1)).view(size, size)  # row j: where the unit at j spreads
