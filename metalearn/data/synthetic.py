"""The offline default dataset: procedurally generated character-like glyphs.

A class is a random composition of 1-4 cubic Bezier strokes, some attached to
an earlier stroke the way pen strokes join in a character. An example is a
perturbed rendering of its class: every control point jittered, its own stroke
thickness, and a small random affine (rotation, scale, shear, shift). Pixels
get ink by their distance to the rendered stroke segments, so the whole set is
rendered in batched tensor code in seconds and is the same for a given seed
on any machine.
"""

from __future__ import annotations

import math

import torch

from metalearn.config import SyntheticConfig
from metalearn.data.cache import cached
from metalearn.data.store import ImageStore, split_by_fractions
from metalearn.errors import MetalearnError
from metalearn.registry import DATASETS

MAX_STROKES = 4
POINTS_PER_STROKE = 12
FORMAT_VERSION = 1


def _class_strokes(num_classes: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Control points [classes, strokes, 4, 2] in [-1, 1]^2 and a mask of strokes in use."""
    n_strokes = torch.multinomial(torch.tensor([0.15, 0.35, 0.3, 0.2]), num_classes, replacement=True, generator=g) + 1
    used = torch.arange(MAX_STROKES)[None, :] < n_strokes[:, None]
    start = torch.rand(num_classes, MAX_STROKES, 2, generator=g) * 1.3 - 0.65
    steps = torch.randn(num_classes, MAX_STROKES, 3, 2, generator=g) * 0.38
    pts = torch.cat([start[:, :, None], start[:, :, None] + steps.cumsum(2)], dim=2).clamp(-0.8, 0.8)
    # attach some strokes to a random point of the previous stroke, as pen strokes join
    attach = torch.rand(num_classes, MAX_STROKES, generator=g) < 0.5
    where = torch.rand(num_classes, MAX_STROKES, generator=g)
    for s in range(1, MAX_STROKES):
        t = where[:, s, None]
        prev = _bezier(pts[:, s - 1], t[:, :, None])[:, 0]
        shift = torch.where(attach[:, s, None], prev - pts[:, s, 0], torch.zeros_like(prev))
        pts[:, s] = (pts[:, s] + shift[:, None]).clamp(-0.85, 0.85)
    return pts, used


def _bezier(ctrl: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Cubic Bezier: ctrl [..., 4, 2], t [..., T, 1] -> points [..., T, 2]."""
    p0, p1, p2, p3 = (ctrl[..., i:i + 1, :] for i in range(4))
    u = 1 - t
    return u**3 * p0 + 3 * u**2 * t * p1 + 3 * u * t**2 * p2 + t**3 * p3


def _render(ctrl: torch.Tensor, used: torch.Tensor, thickness: torch.Tensor, size: int) -> torch.Tensor:
    """Rasterise strokes: ctrl [B, S, 4, 2], used [B, S], thickness [B] -> uint8 [B, size, size]."""
    b = ctrl.shape[0]
    t = torch.linspace(0, 1, POINTS_PER_STROKE)[:, None]
    pts = _bezier(ctrl, t)  # [B, S, T, 2]
    ax, ay = pts[:, :, :-1, 0].reshape(b, 1, -1), pts[:, :, :-1, 1].reshape(b, 1, -1)
    dx, dy = pts[:, :, 1:, 0].reshape(b, 1, -1) - ax, pts[:, :, 1:, 1].reshape(b, 1, -1) - ay
    inv_len2 = 1.0 / (dx * dx + dy * dy).clamp_min(1e-8)
    seg_used = used[:, :, None].expand(-1, -1, POINTS_PER_STROKE - 1).reshape(b, 1, -1)
    axis = (torch.arange(size) + 0.5) / size * 2 - 1
    gy, gx = torch.meshgrid(axis.flip(0), axis, indexing="ij")
    rx, ry = gx.reshape(1, -1, 1) - ax, gy.reshape(1, -1, 1) - ay  # [B, pixels, segments]
    t = ((rx * dx + ry * dy) * inv_len2).clamp_(0, 1)
    rx.sub_(t * dx)
    ry.sub_(t * dy)
    d2 = (rx.mul_(rx) + ry.mul_(ry)).masked_fill_(~seg_used, float("inf"))
    dist = d2.amin(-1).sqrt()  # [B, pixels]
    pixel = 2.0 / size
    ink = ((thickness[:, None] - dist) / pixel + 0.5).clamp(0, 1)
    return (ink * 255).round().to(torch.uint8).reshape(b, size, size)


def _perturb(ctrl: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random rendering's control points (jitter + affine) and stroke thickness."""
    b = ctrl.shape[0]
    ctrl = ctrl + torch.randn(ctrl.shape, generator=g) * 0.045
    angle = (torch.rand(b, generator=g) * 2 - 1) * math.radians(12)
    scale = 1 + (torch.rand(b, 2, generator=g) * 2 - 1) * 0.12
    shear = (torch.rand(b, generator=g) * 2 - 1) * 0.15
    shift = (torch.rand(b, 2, generator=g) * 2 - 1) * 0.1
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shr = torch.eye(2).repeat(b, 1, 1)
    shr[:, 0, 1] = shear
    m = rot @ shr @ torch.diag_embed(scale)
    ctrl = torch.einsum("bij,bskj->bski", m, ctrl) + shift[:, None, None]
    thickness = 0.05 + torch.rand(b, generator=g) * 0.06
    return ctrl, thickness


def generate(num_classes: int, images_per_class: int, image_size: int, seed: int) -> torch.Tensor:
    """All images, uint8 [num_classes * images_per_class, 1, size, size], sorted by class."""
    g = torch.Generator().manual_seed(seed)
    ctrl, used = _class_strokes(num_classes, g)
    ctrl = ctrl.repeat_interleave(images_per_class, 0)
    used = used.repeat_interleave(images_per_class, 0)
    ctrl, thickness = _perturb(ctrl, g)
    chunk = max(1, 2_000_000 // (image_size * image_size * MAX_STROKES * POINTS_PER_STROKE))
    out = [_render(ctrl[i:i + chunk], used[i:i + chunk], thickness[i:i + chunk], image_size)
           for i in range(0, ctrl.shape[0], chunk)]
    return torch.cat(out)[:, None]


@DATASETS.register("synthetic")
def build_synthetic(cfg: SyntheticConfig) -> ImageStore:
    if cfg.num_classes < 3 or cfg.images_per_class < 2:
        raise MetalearnError(f"dataset.num_classes must be >= 3 and dataset.images_per_class >= 2, "
                         f"got {cfg.num_classes} and {cfg.images_per_class}")
    key = {"v": FORMAT_VERSION, "n": cfg.num_classes, "k": cfg.images_per_class,
           "size": cfg.image_size, "seed": cfg.generator_seed}
    data = cached(cfg.cache_dir, "synthetic", key, lambda: {
        "images": generate(cfg.num_classes, cfg.images_per_class, cfg.image_size, cfg.generator_seed)})
    splits = split_by_fractions(cfg.num_classes, list(cfg.split_fractions), cfg.generator_seed)
    names = [f"glyph{c:05d}" for c in range(cfg.num_classes)]
    return ImageStore.from_classes(data["images"], [cfg.images_per_class] * cfg.num_classes, names, splits,
                                   meta={"name": "synthetic"})
