"""`metalearn-predict`: classify your own images with a trained run, from a support folder of class folders.

    metalearn-predict run=outputs/train/<date>/<run> support=my_support query=my_queries
    metalearn-predict run=... support=my_support query='shots/*.png' out=predictions.json top_k=3
    metalearn-predict ... out=mine.csv overwrite=true   # replace a file this command did not write
    metalearn-predict run=... support=big_support save_index=support.npz   # encode the support set once, save it
    metalearn-predict run=... index=support.npz query=my_queries           # classify against the saved set

support: a folder with one sub-folder per class (its name is the class name) holding that class's images;
query: a folder of images, one image file, or a glob. Any image size and mode: each is read and
preprocessed as the run's own training images were. The support set is encoded once (methods that adapt
at test time adapt once); the queries go through in batches. Writes a CSV (or JSON, by out='s suffix) with
each query's file, its top_k class names and their probabilities, and prints a table. It replaces only a
predictions file it wrote (overwrite=true for anything else).

save_index= writes the support set's codes and class names (an .npz of plain arrays, read back as data only);
index= classifies the queries against such a file without reading or encoding the support images again,
refused by a run whose weights differ from the one that made it. With a nearest-centroid head (protonet,
meta_baseline, simpleshot) any number of classes is scored in chunks (metalearn/support_index.py).
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

from metalearn.cli import console_script
from metalearn.errors import MetalearnError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
KEYS = {"run": None, "support": None, "query": None, "out": "predictions.csv", "top_k": "3", "checkpoint": "best",
        "batch": "256", "device": "cpu", "overwrite": "false", "save_index": None, "index": None}
MEANINGS = {"run": "the trained run folder", "support": "a folder with one sub-folder of images per class",
            "query": "a folder of images, one image file, or a glob", "out": "the predictions file: .csv or .json",
            "top_k": "class names (and probabilities) given per query", "checkpoint": "best | last",
            "batch": "queries classified at once", "device": "cpu | cuda | cuda:N",
            "overwrite": "true: replace an out= file this command did not write",
            "save_index": "write the support set's codes and class names to this .npz (query= then optional)",
            "index": "classify against a saved support set (.npz from save_index=) instead of support="}
REQUIRED = ("run",)


def parse_args(argv: list[str]) -> dict[str, str]:
    """key=value arguments, each a known key, run/support/query required."""
    from metalearn.cli import parse_key_values

    args = parse_key_values(argv, "metalearn-predict", KEYS, REQUIRED,
                            "metalearn-predict run=<run folder> support=<folder of class folders> "
                            "query=<folder, image or glob>")
    if bool(args["support"]) == bool(args["index"]):
        raise MetalearnError("give the support set as support=<folder of class folders> or index=<a saved index>, "
                             "one of them")
    if args["index"] and args["save_index"]:
        raise MetalearnError("index= reads a saved support set and save_index= writes one; give one of them")
    if not args["query"] and not args["save_index"]:
        raise MetalearnError("query=<folder, image or glob> is missing: the images to classify")
    for key in ("top_k", "batch"):
        if not args[key].isdigit() or int(args[key]) < 1:
            raise MetalearnError(f"{key}={args[key]} must be a whole number >= 1")
    if args["overwrite"] not in ("true", "false"):
        raise MetalearnError(f"overwrite={args['overwrite']} is not one of: true, false")
    from metalearn.files import refuse_to_replace

    out = Path(args["out"])  # checked before any image is read
    refuse_to_replace(out, written_by_predict(out), "metalearn-predict", args["overwrite"] == "true")
    return args


def written_by_predict(path: Path) -> bool:
    """Whether `path` is a predictions file as this command writes it: its header (CSV) or its rows' keys (JSON)."""
    import json

    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(path.read_text())
            return isinstance(rows, list) and bool(rows) and isinstance(rows[0], dict) and \
                list(rows[0])[:3] == ["file", "class_1", "probability_1"]
        with open(path) as f:
            return f.readline().startswith("file,class_1,probability_1")
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: Path):
    """The image at `path`, decoded; an unreadable file is one error naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise MetalearnError(f"cannot read the image {path}: {type(e).__name__}: {e}; remove it or replace it") from None


def support_set(folder: Path) -> tuple[list, list[int], list[str]]:
    """Images, labels and class names (the sub-folder names, sorted) of a support folder."""
    if not folder.is_dir():
        raise MetalearnError(f"support={folder} is not a folder; give a folder with one sub-folder of images per class")
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise MetalearnError(f"support={folder} has {len(classes)} class folder(s); few-shot classification needs at "
                             f"least 2 (one sub-folder of images per class)")
    images, labels = [], []
    for i, c in enumerate(classes):
        files = _images_in(c)
        if not files:
            raise MetalearnError(f"support class {c.name!r} ({c}) has no image file ({', '.join(IMAGE_SUFFIXES)}); "
                                 f"add its examples or remove the folder")
        for f in files:
            images.append(read_image(f))
            labels.append(i)
    return images, labels, [c.name for c in classes]


def query_files(query: str) -> list[Path]:
    """The query images: a folder's image files, one file, or a glob's matches."""
    p = Path(query)
    if p.is_dir():
        files = _images_in(p)
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(m) for m in glob.glob(query) if Path(m).is_file())
    if not files:
        raise MetalearnError(f"query={query} holds no image file ({', '.join(IMAGE_SUFFIXES)}); give a folder of "
                             f"images, an image file or a glob such as 'photos/*.png'")
    return files


def predict(args: dict[str, str]) -> list[dict]:
    from metalearn.api import load_run
    from metalearn.engine.progress import Progress
    from metalearn.support_index import SupportIndex, weights_digest

    learner = load_run(args["run"], args["checkpoint"], args["device"])
    index = None
    if args["index"]:
        path = Path(args["index"])
        index = SupportIndex.load(path)
        index.check_fits(learner.method.name, weights_digest(learner.method), path)
        names = index.classes
    else:
        images, labels, names = support_set(Path(args["support"]))
        try:
            learner.fit(images, [names[i] for i in labels])
        except MetalearnError as e:  # the run's own limit (a fixed-way head) is about this support folder: say so
            raise MetalearnError(f"support={args['support']} has {len(names)} class folders ({', '.join(names[:6])}"
                                 f"{', ...' if len(names) > 6 else ''}), and {e}") from None
        if args["save_index"]:
            saved = learner.support_index(args["run"], args["checkpoint"])
            saved.save(Path(args["save_index"]))
            print(f"support index: {len(names)} classes, {len(saved.labels)} images -> {args['save_index']}",
                  file=sys.stderr)
    if not args["query"]:
        return []
    files = query_files(args["query"])
    k = min(int(args["top_k"]), len(names))
    rows: list[dict] = []
    batch = int(args["batch"])
    with Progress(len(files), 0, "queries") as bar:
        for start in range(0, len(files), batch):
            chunk = files[start:start + batch]
            top, probs = learner.top_k([read_image(f) for f in chunk], k, index)
            for f, classes, p in zip(chunk, top, probs.tolist(), strict=True):
                row = {"file": str(f)}
                for r in range(k):
                    row[f"class_{r + 1}"] = classes[r]
                    row[f"probability_{r + 1}"] = round(p[r], 6)
                rows.append(row)
            bar.tick(start + len(chunk))
    return rows


def write(rows: list[dict], out: Path) -> None:
    import json

    from metalearn.files import write_csv, write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        write_text(out, json.dumps(rows, indent=2))
    else:
        write_csv(rows, out)


def show(rows: list[dict], limit: int = 20) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("file", "top class", "probability", *(["next"] if "class_2" in rows[0] else []))
    for r in rows[:limit]:
        nxt = [f"{r['class_2']} ({r['probability_2']:.2f})"] if "class_2" in r else []
        table.add_row(Path(r["file"]).name, r["class_1"], f"{r['probability_1']:.3f}", *nxt)
    Console().print(table)
    if len(rows) > limit:
        print(f"... and {len(rows) - limit} more")


@console_script
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("--help", "-h") for a in argv):
        from metalearn.cli import keys_help

        print(f"{__doc__}\n{keys_help(KEYS, MEANINGS, REQUIRED)}")
        return
    from metalearn.console import setup_logging

    setup_logging(None)
    try:
        args = parse_args(argv)
        rows = predict(args)
        if rows:
            write(rows, Path(args["out"]))
    except MetalearnError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if not rows:
        return
    show(rows)
    print(f"{len(rows)} predictions -> {args['out']}", file=sys.stderr)


if __name__ == "__main__":
    main()
