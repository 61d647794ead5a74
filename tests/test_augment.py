"""Training-time pixel augmentation: a random affine per image that keeps the background."""

from __future__ import annotations

import torch

from metalearn.config import AugmentConfig
from metalearn.tasks.augment import random_affine


def test_zero_strength_is_the_identity():
    x = torch.rand(2, 3, 1, 28, 28)
    y = random_affine(x, AugmentConfig(True, rotate=0.0, scale=0.0, shift=0.0), background=0.0)
    assert y.shape == x.shape and torch.allclose(x, y, atol=1e-5)


def test_images_change_and_new_pixels_are_background():
    torch.manual_seed(0)
    x = torch.full((8, 1, 28, 28), -0.4)  # an all-background batch...
    x[:, :, 10:18, 10:18] = 2.0  # ...with a square of ink
    y = random_affine(x, AugmentConfig(True, rotate=15, scale=0.15, shift=0.1), background=-0.4)
    assert not torch.allclose(x, y)
    assert torch.allclose(y[:, :, :2, :], torch.full_like(y[:, :, :2, :], -0.4), atol=1e-5)  # edges stay background
    assert (y.amax(dim=(1, 2, 3)) > 1.0).all()  # the ink survives


def test_augmentation_is_seeded():
    x = torch.rand(4, 1, 28, 28)
    cfg = AugmentConfig(True, 15, 0.15, 0.1)
    torch.manual_seed(3)
    a = random_affine(x, cfg, 0.0)
    torch.manual_seed(3)
    assert torch.equal(a, random_affine(x, cfg, 0.0))
