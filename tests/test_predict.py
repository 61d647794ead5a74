"""metalearn-predict and the named API (fit / classify / embed) on a user's own image folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import run_main
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "bar")


def draw(shape: str, size: int, mode: str, shift: int) -> Image.Image:
    """A white shape on black, any size and mode: what a user's folder may hold."""
    img = Image.new("L", (size, size), 0)
    d, m, s = ImageDraw.Draw(img), size // 5 + shift, size - size // 5 + shift
    {"circle": lambda: d.ellipse([m, m, s, s], fill=255),
     "square": lambda: d.rectangle([m, m, s, s], fill=255),
     "triangle": lambda: d.polygon([(m, s), (s, s), ((m + s) // 2, m)], fill=255),
     "cross": lambda: (d.line([m, m, s, s], fill=255, width=size // 8), d.line([m, s, s, m], fill=255, width=size // 8)),
     "bar": lambda: d.rectangle([m, size // 2 - size // 10, s, size // 2 + size // 10], fill=255)}[shape]()
    return img.convert(mode)


def folders(root: Path, classes: tuple[str, ...], shots: int = 2, queries: int = 2) -> tuple[Path, Path]:
    support, query = root / "support", root / "query"
    for c in classes:
        (support / c).mkdir(parents=True)
        for k in range(shots):
            draw(c, 40 + 13 * k, ("L", "RGB", "RGBA")[k % 3], k).save(support / c / f"{k}.png")
    query.mkdir()
    for c in classes:
        for k in range(queries):
            draw(c, 64 + 7 * k, ("RGB", "L")[k % 2], 2 - k).save(query / f"{c}_{k}.png")
    return support, query


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Smoke runs of an embedding method, a method that adapts at test time, a memory one and a baseline."""
    cwd = tmp_path_factory.mktemp("predict")
    out = {}
    for method in ("protonet", "maml", "mann", "baselinepp"):
        code, text = run_main("metalearn-train", f"method={method}", "debug=smoke", "test.episodes=5",
                              f"run_dir={method}", cwd=cwd)
        assert code == 0, text
        out[method] = cwd / method
    return out


@pytest.mark.parametrize("method", ["protonet", "maml", "mann", "baselinepp"])
def test_predict_writes_each_querys_top_classes(runs, tmp_path, method):
    classes = SHAPES  # 5 classes: the MAML run's head has 5 outputs
    support, query = folders(tmp_path, classes)
    code, text = run_main("metalearn-predict", f"run={runs[method]}", f"support={support}", f"query={query}",
                          "out=pred.csv", "top_k=3", cwd=tmp_path)
    assert code == 0, text
    with open(tmp_path / "pred.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["file"]).name for r in rows) == sorted(p.name for p in query.iterdir())
    for r in rows:
        probs = [float(r[f"probability_{k}"]) for k in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert len({r["class_1"], r["class_2"], r["class_3"]}) == 3 and r["class_1"] in classes
    # the same figures through the API
    from metalearn import load_run

    learner = load_run(runs[method])
    images = [Image.open(p) for c in sorted(classes) for p in sorted((support / c).iterdir())]
    learner.fit(images, [c for c in sorted(classes) for _ in sorted((support / c).iterdir())])
    names, probs = learner.classify([Image.open(Path(r["file"])) for r in rows])
    assert names == [r["class_1"] for r in rows]
    assert probs.tolist() == pytest.approx([float(r["probability_1"]) for r in rows], abs=1e-5)


def test_json_output_and_a_glob(runs, tmp_path):
    support, query = folders(tmp_path, ("circle", "square", "cross"))
    code, text = run_main("metalearn-predict", f"run={runs['protonet']}", f"support={support}",
                          f"query={query}/circle_*.png", "out=out/pred.json", "top_k=5", cwd=tmp_path)
    assert code == 0, text
    rows = json.loads((tmp_path / "out" / "pred.json").read_text())
    assert [Path(r["file"]).name for r in rows] == ["circle_0.png", "circle_1.png"]
    assert "class_3" in rows[0] and "class_4" not in rows[0]  # top_k is capped at the classes there are


def test_the_support_set_is_encoded_once(runs, tmp_path):
    from metalearn import load_run

    support, query = folders(tmp_path, ("circle", "square", "cross"), shots=3)
    learner = load_run(runs["protonet"])
    seen = []
    encode = learner.method.encode
    learner.method.encode = lambda x: seen.append(len(x)) or encode(x)
    learner.fit([Image.open(p) for c in ("circle", "cross", "square") for p in sorted((support / c).iterdir())],
                [c for c in ("circle", "cross", "square") for _ in range(3)])
    for batch in (sorted(query.iterdir())[:2], sorted(query.iterdir())[2:]):
        learner.classify([Image.open(p) for p in batch])
    assert seen == [9, 2, 4]  # the support once, then only each batch of queries


def test_embed_gives_the_codes_and_refuses_adapting_methods(runs):
    from metalearn import load_run
    from metalearn.errors import MetalearnError

    proto = load_run(runs["protonet"])
    x = torch.rand(3, 1, 28, 28)
    codes = proto.embed(x)
    assert codes.shape[0] == 3 and torch.allclose(codes, proto.method.encode(proto.preprocess(x)).detach())
    with pytest.raises(MetalearnError, match="adapts at test time"):
        load_run(runs["maml"]).embed(x)


@pytest.mark.parametrize(("case", "phrases"), [
    ("empty_class", ["support class 'square'", "has no image file"]),
    ("bad_query", ["cannot read the image", "broken.png"]),
    ("one_class", ["has 1 class folder", "at least 2"]),
    ("empty_query", ["holds no image file"]),
    ("too_many_for_maml", ["has 3 class folders (circle, cross, square)", "can only be evaluated 5-way, not 3-way"]),
    ("unknown_key", ["'colour=red' is not a key=value argument", "top_k"]),
])
def test_bad_input_is_one_clear_line(runs, tmp_path, case, phrases):
    support, query = folders(tmp_path, ("circle", "square", "cross"))
    run = runs["maml" if case == "too_many_for_maml" else "protonet"]
    extra = []
    if case == "empty_class":
        for p in (support / "square").iterdir():
            p.unlink()
    elif case == "bad_query":
        (query / "broken.png").write_bytes(b"not an image")
    elif case == "one_class":
        for c in ("square", "cross"):
            for p in (support / c).iterdir():
                p.unlink()
            (support / c).rmdir()
    elif case == "empty_query":
        query = tmp_path / "nothing"
        query.mkdir()
    elif case == "unknown_key":
        extra = ["colour=red"]
    code, text = run_main("metalearn-predict", f"run={run}", f"support={support}", f"query={query}", *extra,
                          cwd=tmp_path)
    errors = [line for line in text.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1, text
    assert "Traceback" not in text
    for p in phrases:
        assert p in errors[0], errors[0]


@pytest.mark.e2e
def test_predict_and_export_replace_only_their_own_output(runs, tmp_path):
    """A user's own file at out= is refused by name (overwrite=true replaces it); a file the command wrote is
    replaced without asking."""
    from metalearn.export import written_by_export
    from metalearn.predict import written_by_predict

    support, query = folders(tmp_path, SHAPES)
    args = (f"run={runs['protonet']}", f"support={support}", f"query={query}")
    mine = tmp_path / "mine.csv"
    mine.write_text("my own table\n")
    code, text = run_main("metalearn-predict", *args, f"out={mine}", cwd=tmp_path)
    assert code == 2 and "out=" in text and "is a file metalearn-predict did not write" in text, text
    assert "overwrite=true" in text and mine.read_text() == "my own table\n"
    ours = tmp_path / "ours.json"
    for _ in range(2):  # its own file it replaces
        code, text = run_main("metalearn-predict", *args, f"out={ours}", cwd=tmp_path)
        assert code == 0 and written_by_predict(ours), text
    code, text = run_main("metalearn-predict", *args, f"out={mine}", "overwrite=true", cwd=tmp_path)
    assert code == 0 and written_by_predict(mine), text

    encoder = tmp_path / "mine.pt2"
    encoder.write_bytes(b"not an encoder")
    export = (f"run={runs['protonet']}", "format=pt2", f"out={encoder}")
    code, text = run_main("metalearn-export", *export, cwd=tmp_path)
    assert code == 2 and "is a file metalearn-export did not write" in text, text
    assert encoder.read_bytes() == b"not an encoder" and not written_by_export(encoder)
    code, text = run_main("metalearn-export", *export, "overwrite=true", cwd=tmp_path)
    assert code == 0 and written_by_export(encoder), text
    code, text = run_main("metalearn-export", *export, cwd=tmp_path)
    assert code == 0, text  # now its own: replaced without asking
