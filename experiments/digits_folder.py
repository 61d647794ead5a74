"""Handwritten digits as an image_folder (root/<digit>/<n>.png), a cross-domain target for glyph-trained runs.

The 1,797 8x8 digits of Alpaydin & Kaynak's UCI set (CC BY 4.0), as scikit-learn ships them in
sklearn/datasets/data/digits.csv.gz (64 pixel values 0..16, then the digit). No scikit-learn install is needed:
give the CSV (from the wheel: `pip download --no-deps scikit-learn`, then unzip that one file).

    python experiments/digits_folder.py CSV_GZ OUT      # then: metalearn-eval run=... dataset=image_folder \
        dataset_root=OUT dataset.channels=1 'dataset.split_fractions=[0,0,1]'

Pixels are written as ink intensity (0 background, 255 full ink), the convention Omniglot's and the synthetic
glyphs' stores use (bright strokes on dark).
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def write(csv_gz: Path, out: Path) -> int:
    with gzip.open(csv_gz, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    pixels, digits = rows[:, :64], rows[:, 64]
    for i, (p, d) in enumerate(zip(pixels, digits, strict=True)):
        folder = out / str(int(d))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((p.reshape(8, 8) * 255 // 16).astype(np.uint8), "L").save(folder / f"{i:04d}.png")
    return len(rows)


if __name__ == "__main__":
    n = write(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{n} digits -> {sys.argv[2]}")
