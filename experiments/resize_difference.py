"""How far `metalearn-data prepare`'s resizes land from OpenCV's, and how much the choice of resize changes the pixels.

    python experiments/resize_difference.py PHOTO_FOLDER [crops=10] [size=84]

The circulating miniImageNet pickles were squashed to 84x84 with cv2.resize's default INTER_LINEAR, the
tieredImageNet ones with INTER_CUBIC (Ren et al.'s few-shot-ssl-public). `prepare` runs the same sampling in
torch (metalearn.data.prepared.resize), so as not to depend on OpenCV. For each photo, and `crops` random crops
of it (200 to 500 pixels a side, as ImageNet's photos are), this prints the mean and largest absolute
difference in grey levels (0-255) of:
  - bilinear vs cv2 INTER_LINEAR, bicubic vs cv2 INTER_CUBIC (needs opencv-python-headless: the fidelity);
  - bilinear vs bicubic, area (INTER_AREA, mini-imagenet-tools'), lanczos (the loaders' default): the choice.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from metalearn.data.prepared import resize


def photos(folder: Path, crops: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        img = Image.open(p).convert("RGB")
        out.append(img)
        w, h = img.size
        for _ in range(crops):
            cw, ch = (int(rng.integers(200, min(500, w) + 1)), int(rng.integers(200, min(500, h) + 1)))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            out.append(img.crop((x, y, x + cw, y + ch)))
    return out


def diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


def main(argv: list[str]) -> None:
    folder = Path(argv[0])
    keys = dict(a.split("=", 1) for a in argv[1:])
    size, crops = int(keys.get("size", 84)), int(keys.get("crops", 10))
    images = photos(folder, crops)
    print(f"{len(images)} images from {folder} ({crops} crops each), resized to {size}x{size}")
    ours = {how: [resize(img, size, how) for img in images] for how in ("bilinear", "bicubic", "area", "lanczos")}
    rows = []
    try:
        import cv2

        for how, flag in (("bilinear", cv2.INTER_LINEAR), ("bicubic", cv2.INTER_CUBIC)):
            ref = [cv2.resize(np.asarray(img), (size, size), interpolation=flag) for img in images]
            d = np.stack([diff(a, b) for a, b in zip(ours[how], ref, strict=True)])
            rows.append((f"{how} vs cv2 {'INTER_LINEAR' if how == 'bilinear' else 'INTER_CUBIC'} {cv2.__version__}",
                         d.mean(), d.max(), int((d != 0).sum()), d.size))
    except ImportError:
        print("(opencv-python-headless is not installed: the comparison with OpenCV is skipped)")
    for other in ("bicubic", "area", "lanczos"):
        d = np.stack([diff(a, b) for a, b in zip(ours["bilinear"], ours[other], strict=True)])
        rows.append((f"bilinear vs {other}", d.mean(), d.max(), int((d != 0).sum()), d.size))
    print(f"{'pair':<42}{'mean |diff|':>12}{'max':>6}{'values that differ':>26}")
    for name, mean, mx, n, total in rows:
        print(f"{name:<42}{mean:>12.4f}{int(mx):>6}{n:>11,} of {total:,} ({100 * n / total:.3f}%)")


if __name__ == "__main__":
    main(sys.argv[1:])
