"""Training-time pixel augmentation: a random affine per image that keeps the background."""

from __future__ import annotations

import pytest
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


def test_elastic_off_draws_no_random_numbers():
    """Runs without the elastic distortion, shear and aspect keep their random stream, so earlier runs
    reproduce and resume."""
    x = torch.rand(4, 1, 28, 28)
    torch.manual_seed(5)
    random_affine(x, AugmentConfig(True, 15, 0.15, 0.1), 0.0)
    after = torch.rand(1)
    torch.manual_seed(5)
    torch.rand(4, 4)  # the affine's own draws
    assert torch.equal(after, torch.rand(1))


def test_shear_and_aspect_slant_and_widen_the_ink():
    """A vertical bar leans by the shear (about shear x its height across it) and keeps its centre. (Without
    them no random numbers are drawn for them: the next test.)"""
    x = torch.zeros(64, 1, 28, 28)
    x[..., 4:24, 13:15] = 1.0
    torch.manual_seed(0)
    y = random_affine(x, AugmentConfig(True, rotate=0, scale=0, shift=0, shear=0.5), 0.0)
    cols = torch.arange(28.0)
    def centre(row: int) -> torch.Tensor:  # the ink's mean column in one row, per image
        ink = y[:, 0, row]
        return (ink * cols).sum(-1) / ink.sum(-1)
    lean = (centre(22) - centre(5)).abs()
    assert lean.max() > 5 and lean.max() <= 0.5 * 17 + 1.5  # up to shear x the 17 rows between them
    assert torch.allclose((centre(22) + centre(5)) / 2, torch.full((64,), 13.5), atol=0.6)  # about the centre
    torch.manual_seed(0)
    wide = random_affine(x, AugmentConfig(True, rotate=0, scale=0, shift=0, aspect=0.3), 0.0)
    widths = (wide[:, 0, 14] > 0.25).sum(-1).float()
    assert widths.max() > widths.min()  # some copies wider, some narrower


def test_elastic_field_is_smooth_and_scales_with_alpha():
    from metalearn.tasks.augment import elastic_field

    torch.manual_seed(0)
    a = elastic_field(200, 28, 28, 10.0, 4.0, torch.device("cpu"))
    torch.manual_seed(0)
    b = elastic_field(200, 28, 28, 20.0, 4.0, torch.device("cpu"))
    assert a.shape == (200, 28, 28, 2)
    torch.testing.assert_close(b, 2 * a)  # linear in alpha, the same noise
    pixels = a * 14  # grid units -> pixels on a 28-pixel side
    # smoothed: a neighbour's displacement is nearly the same; far pixels are nearly independent
    near = torch.corrcoef(torch.stack([pixels[:, 10, 10, 0], pixels[:, 10, 11, 0]]))[0, 1]
    far = torch.corrcoef(torch.stack([pixels[:, 2, 2, 0], pixels[:, 25, 25, 0]]))[0, 1]
    assert near > 0.9 and abs(far) < 0.3
    # smoothing uniform(-1, 1) noise (std 0.577) by a Gaussian of sigma 4 pixels (sum of squared weights
    # 1 / (4 pi sigma^2) in 2-d) leaves a std of about 0.577 / (2 sqrt(pi) 4) = 0.041: times alpha 10 -> 0.41 px
    assert 0.3 < pixels[:, 8:20, 8:20].std() < 0.5


@pytest.mark.parametrize("size, sigma", [(28, 4.0), (20, 1.5), (9, 4.0)])  # the last: kernel wider than the image
def test_elastic_smoothing_is_the_padded_gaussian_convolution(size, sigma):
    """The matrix form equals the direct one: pad each row (then column) by reflection, convolve with the
    normalised Gaussian, on the same draws as torch.rand gives the field."""
    import math

    from torch.nn import functional as F

    from metalearn.tasks.augment import elastic_field

    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-t**2 / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).tolist()
    mode = "reflect" if radius < size else "replicate"
    torch.manual_seed(3)
    noise = torch.rand(2 * 5, 1, size, size) * 2 - 1
    rows = F.pad(noise, (radius, radius, 0, 0), mode=mode)
    rows = sum(w * rows[..., :, i:i + size] for i, w in enumerate(kernel))
    cols = F.pad(rows, (0, 0, radius, radius), mode=mode)
    smooth = sum(w * cols[..., i:i + size, :] for i, w in enumerate(kernel))
    expected = 7.0 * smooth.view(5, 2, size, size).permute(0, 2, 3, 1) * (2.0 / size)
    torch.manual_seed(3)
    torch.testing.assert_close(elastic_field(5, size, size, 7.0, sigma, torch.device("cpu")), expected)


def test_elastic_distortion_moves_ink_without_losing_it():
    torch.manual_seed(1)
    x = torch.full((16, 1, 28, 28), -0.4)
    x[:, :, 6:22, 13:15] = 2.0  # a vertical stroke
    y = random_affine(x, AugmentConfig(True, 0.0, 0.0, 0.0, elastic_alpha=34.0, elastic_sigma=4.0), background=-0.4)
    assert not torch.allclose(x, y)
    ink = lambda t: (t > 0.8).float().sum(dim=(1, 2, 3))  # noqa: E731
    ratio = ink(y) / ink(x)  # a smooth field stretches or squeezes a stroke locally, never erases it
    assert (ratio > 0.4).all() and (ratio < 2.5).all() and ratio.std() > 0
    assert torch.allclose(y[:, :, :1, :], torch.full_like(y[:, :, :1, :], -0.4), atol=1e-5)


def test_elastic_applies_to_the_trainers_composed_config():
    """The trainer passes the composed DictConfig, not the dataclass: the distortion must reach it too."""
    from omegaconf import OmegaConf

    x = torch.rand(4, 1, 28, 28)
    plain = OmegaConf.structured(AugmentConfig(True, 15, 0.15, 0.1))
    elastic = OmegaConf.structured(AugmentConfig(True, 15, 0.15, 0.1, elastic_alpha=34.0, elastic_sigma=4.0))
    torch.manual_seed(2)
    a = random_affine(x, plain, 0.0)
    torch.manual_seed(2)
    b = random_affine(x, elastic, 0.0)
    torch.manual_seed(2)
    assert torch.equal(a, random_affine(x, AugmentConfig(True, 15, 0.15, 0.1), 0.0))
    assert not torch.allclose(a, b)
