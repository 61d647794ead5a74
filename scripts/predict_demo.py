"""metalearn-predict on real characters a run never saw: one Omniglot alphabet of the small2 archive as a
support folder (one drawer's image per character) and query images from the other drawers.

    python scripts/predict_demo.py RUN [--alphabet Sanskrit] [--ways 20] [--queries-per-class 5] [--folder demo]

Builds <folder>/support/<character>/ and <folder>/query/<character>__<file>.png from
../shared/data/omniglot/images_background_small2.zip, runs `metalearn-predict`, and prints the accuracy
(a query is right when its top class is its own character) and the queries per second of the prediction
(the support set encoded once; the time from the command's start, so model loading is included).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"


def build(folder: Path, alphabet: str, ways: int, queries: int) -> int:
    """The support and query folders; returns the number of queries."""
    archive = SHARED / "data" / "omniglot" / "images_background_small2.zip"
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "query").mkdir(parents=True)
    with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if f"/{alphabet}/" in n and n.endswith(".png")]
        characters = sorted({n.split("/")[-2] for n in names})[:ways]
        if len(characters) < ways:
            raise SystemExit(f"{alphabet} has {len(characters)} characters in small2; ask for fewer --ways")
        count = 0
        for c in characters:
            files = sorted(n for n in names if n.split("/")[-2] == c)  # <character id>_<drawer>.png
            (folder / "support" / c).mkdir(parents=True)
            (folder / "support" / c / Path(files[0]).name).write_bytes(z.read(files[0]))
            for f in files[1:1 + queries]:
                (folder / "query" / f"{c}__{Path(f).name}").write_bytes(z.read(f))
                count += 1
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--alphabet", default="Sanskrit")
    ap.add_argument("--ways", type=int, default=20)
    ap.add_argument("--queries-per-class", type=int, default=5)
    ap.add_argument("--folder", type=Path, default=Path("outputs/predict_demo"))
    args = ap.parse_args()
    n = build(args.folder, args.alphabet, args.ways, args.queries_per_class)
    out = args.folder / "predictions.csv"
    start = time.perf_counter()
    subprocess.run(["metalearn-predict", f"run={args.run}", f"support={args.folder / 'support'}",
                    f"query={args.folder / 'query'}", f"out={out}"], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    right = sum(Path(r["file"]).name.split("__")[0] == r["class_1"] for r in rows)
    print(f"{args.alphabet}, {args.ways}-way 1-shot, {n} queries: accuracy {100 * right / n:.1f}% ({right}/{n}); "
          f"{n / seconds:.1f} queries/s including start-up ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
