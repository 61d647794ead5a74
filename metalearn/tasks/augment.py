"""Pixel augmentation of training episodes: a small random affine per image, on the batch and the
device (never per image on the CPU). Class-making augmentations (Omniglot's 90-degree rotations)
live in the dataset instead; these only perturb examples within their class."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from metalearn.config import AugmentConfig


def random_affine(x: torch.Tensor, cfg: AugmentConfig, background: float) -> torch.Tensor:
    """x [..., C, H, W] -> each image rotated, scaled and shifted at random; new pixels are background."""
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
    out = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + background
    return out.reshape(shape)
