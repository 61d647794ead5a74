"""metalearn-data without the internet: a test HTTP server on 127.0.0.1 serves small archives built here in the
real formats (Omniglot zips, a CIFAR-100 tarball, a CUB tgz), and an ImageNet-style class-folder tree stands in
for ILSVRC2012 for `prepare`. The checksum table is the test's own (catalog.CATALOG points at it)."""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import json
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import cli
from PIL import Image

from metalearn import data_cli
from metalearn.data import catalog, fetch, prepared


# ------------------------------------------------------------------ a loopback server
class Server:
    """Serves `files` (path -> bytes) with HTTP Range; `drop_once` paths send half the body on their first request
    and close the connection; unknown paths 404. `requests` records (path, Range header)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_once: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start, status = int(rng[6:].split("-")[0]), 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                if self.path in server.drop_once:
                    server.drop_once.discard(self.path)
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def use_catalog(monkeypatch, tmp_path, files: dict[str, tuple[bytes, list[str]]], datasets: dict | None = None):
    """The real catalogue with these files' sizes, checksums and urls in place of the real ones."""
    table = json.loads(Path(catalog.__file__).with_name("catalog.json").read_text())
    for name, (body, urls) in files.items():
        table["files"][name] = {"size": len(body), "sha256": sha(body), "urls": urls}
    table["datasets"].update(datasets or {})
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(table))
    monkeypatch.setattr(catalog, "CATALOG", path)
    monkeypatch.setenv("METALEARN_DATA", str(tmp_path / "home"))


def omniglot_zip(archive: str, alphabets=("Alpha", "Beta"), characters=3, drawers=4) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for a in alphabets:
            for c in range(1, characters + 1):
                for d in range(1, drawers + 1):
                    img = Image.new("L", (105, 105), 255)
                    img.paste(0, (5 * c, 5 * d, 5 * c + 30, 5 * d + 30))
                    png = io.BytesIO()
                    img.save(png, format="PNG")
                    z.writestr(f"{archive}/{a}/character{c:02d}/{c:04d}_{d:02d}.png", png.getvalue())
    return buf.getvalue()


def run(*argv: str) -> tuple[int, str]:
    """metalearn-data's main() as the shell calls it; (exit status, its error line or '')."""
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = data_cli.main(list(argv))
    return code, err.getvalue()


# ------------------------------------------------------------------ get
def test_get_downloads_checks_and_the_dataset_reads_it_from_the_default_root(server, tmp_path, monkeypatch):
    from metalearn.config import OmniglotConfig
    from metalearn.data.omniglot import build_omniglot

    small = {n: omniglot_zip(n) for n in ("images_background_small1", "images_background_small2")}
    for n, body in small.items():
        server.files[f"/{n}.zip"] = body
    use_catalog(monkeypatch, tmp_path, {f"{n}.zip": (b, [f"{server.url}/{n}.zip"]) for n, b in small.items()})
    code, err = run("get", "omniglot_small")
    assert code == 0, err
    home = tmp_path / "home" / "omniglot"
    assert {p.name for p in home.iterdir()} == {"images_background_small1.zip", "images_background_small2.zip",
                                                catalog.CHECKED}
    assert (home / "images_background_small1.zip").read_bytes() == small["images_background_small1"]
    assert catalog.state(catalog.entry("omniglot_small"), home) == "checked"
    assert catalog.state(catalog.entry("omniglot"), home) == "missing"
    # dataset.root unset: the builder looks where get put the files
    store = build_omniglot(OmniglotConfig(root=None, archives=["images_background_small1", "images_background_small2"],
                                          check_md5=False, rotations=[], split="character", cache_dir=str(tmp_path / "c")))
    assert store.num_classes == 6  # the two archives share their alphabets' characters
    code, _ = run("get", "omniglot_small")  # already there: hashed, nothing fetched again
    assert code == 0 and len(server.requests) == 2


def test_a_dropped_connection_is_resumed_to_the_same_bytes(server, tmp_path, monkeypatch):
    body = bytes(range(256)) * 4000  # ~1 MB
    server.files["/f.tgz"] = body
    server.drop_once.add("/f.tgz")
    use_catalog(monkeypatch, tmp_path, {"cifar-100-python.tar.gz": (body, [f"{server.url}/f.tgz"])})
    root = tmp_path / "data"
    code, err = run("get", "cifar_fs", f"root={root}")
    assert code == 2 and "after" in err and "resumes it" in err and len(err.strip().splitlines()) == 1, err
    part = root / "cifar-100-python.tar.gz.part"
    half = part.stat().st_size
    assert 0 < half < len(body) and part.read_bytes() == body[:half]
    assert not (root / "cifar-100-python.tar.gz").exists()
    code, err = run("get", "cifar_fs", f"root={root}")
    assert code == 0, err
    assert (root / "cifar-100-python.tar.gz").read_bytes() == body and not part.exists()
    assert server.requests == [("/f.tgz", None), ("/f.tgz", f"bytes={half}-")]


def test_a_first_mirror_that_404s_falls_through_to_the_next(server, tmp_path, monkeypatch):
    body = b"x" * 5000
    server.files["/good/a.tar.gz"] = body
    use_catalog(monkeypatch, tmp_path, {"cifar-100-python.tar.gz": (
        body, [f"{server.url}/gone/a.tar.gz", f"{server.url}/good/a.tar.gz"])})
    code, err = run("get", "cifar_fs")
    assert code == 0, err
    assert (tmp_path / "home" / "cifar100" / "cifar-100-python.tar.gz").read_bytes() == body
    assert [p for p, _ in server.requests] == ["/gone/a.tar.gz", "/good/a.tar.gz"]


def test_a_wrong_checksum_renames_nothing_and_touches_nothing_else(server, tmp_path, monkeypatch):
    server.files["/a.tar.gz"] = b"y" * 5000
    use_catalog(monkeypatch, tmp_path, {"cifar-100-python.tar.gz": (b"z" * 5000, [f"{server.url}/a.tar.gz"])})
    root = tmp_path / "data"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    (root / "other.tar.gz.part").write_text("also mine")
    code, err = run("get", "cifar_fs", f"root={root}")
    assert code == 2 and f"{server.url}/a.tar.gz served a file whose SHA-256" in err, err
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt", "other.tar.gz.part"]
    assert (root / "notes.txt").read_text() == "mine" and (root / "other.tar.gz.part").read_text() == "also mine"


def test_a_server_that_never_answers_times_out_in_one_line(tmp_path, monkeypatch):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections, never answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/a.tar.gz"
        use_catalog(monkeypatch, tmp_path, {"cifar-100-python.tar.gz": (b"z" * 100, [url])})
        code, err = run("get", "cifar_fs", "timeout=1")
    finally:
        silent.close()
    assert code == 2 and "no answer" in err and url in err and "by hand" in err, err
    assert len(err.strip().splitlines()) == 1


def test_no_network_names_the_url_and_where_to_put_the_file(tmp_path, monkeypatch):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused
    use_catalog(monkeypatch, tmp_path, {"cifar-100-python.tar.gz": (b"z" * 100, [f"http://127.0.0.1:{port}/c.tgz"])})
    code, err = run("get", "cifar_fs")
    assert code == 2 and "cannot connect" in err
    assert f"download http://127.0.0.1:{port}/c.tgz by hand and put it at {tmp_path / 'home' / 'cifar100'}" in err


def test_a_full_disk_keeps_the_part_to_resume(server, tmp_path, monkeypatch):
    body = bytes(range(256)) * 8000  # 2 MB: two chunks
    server.files["/a.tar.gz"] = body
    use_catalog(monkeypatch, tmp_path, {"cifar-100-python.tar.gz": (body, [f"{server.url}/a.tar.gz"])})
    real, calls = fetch._write, []

    def full_after_one_chunk(out, block):
        calls.append(len(block))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(out, block)

    monkeypatch.setattr(fetch, "_write", full_after_one_chunk)
    code, err = run("get", "cifar_fs")
    assert code == 2 and "is full after 1,048,576 of 2,048,000 bytes" in err and "to resume" in err, err
    part = tmp_path / "home" / "cifar100" / "cifar-100-python.tar.gz.part"
    assert part.read_bytes() == body[:fetch.CHUNK]
    monkeypatch.setattr(fetch, "_write", real)
    code, err = run("get", "cifar_fs")
    assert code == 0, err
    assert (tmp_path / "home" / "cifar100" / "cifar-100-python.tar.gz").read_bytes() == body


def test_verify_rehashes_and_names_a_changed_file(server, tmp_path, monkeypatch):
    body = b"q" * 3000
    server.files["/a.tgz"] = body
    use_catalog(monkeypatch, tmp_path, {"cifar-100-python.tar.gz": (body, [f"{server.url}/a.tgz"])})
    assert run("get", "cifar_fs")[0] == 0
    assert run("verify", "fc100")[0] == 0
    f = tmp_path / "home" / "cifar100" / "cifar-100-python.tar.gz"
    f.write_bytes(body[:-1] + b"!")
    assert catalog.state(catalog.entry("cifar_fs"), f.parent) == "present"  # changed since it was checked
    code, err = run("verify", "cifar_fs")
    assert code == 2 and "cifar-100-python.tar.gz has SHA-256" in err and "not " + sha(body) in err
    code, err = run("get", "cifar_fs")  # get refuses to replace a file it did not write as it is
    assert code == 2 and "does not delete files it did not write" in err and f.read_bytes().endswith(b"!")


def test_bad_input_is_one_line_and_exit_status_2(tmp_path, monkeypatch):
    monkeypatch.setenv("METALEARN_DATA", str(tmp_path))
    for argv, phrase in ((["frob"], "not a metalearn-data command"), (["get"], "needs a dataset name"),
                         (["get", "nope"], "unknown dataset 'nope'"), (["get", "cub", "color=red"], "color= is not a key"),
                         (["get", "mini_imagenet"], "metalearn-data prepare mini_imagenet imagenet="),
                         (["get", "cub", "timeout=soon"], "timeout=soon is not a positive number"),
                         (["prepare", "cub"], "cub is downloaded"), (["prepare", "mini_imagenet"], "needs imagenet=PATH"),
                         (["verify", "cub"], "CUB_200_2011.tgz is missing (metalearn-data get cub)")):
        code, err = run(*argv)
        assert code == 2 and phrase in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_list_shows_every_dataset_without_importing_torch(tmp_path):
    """list answers at once: it reads the catalogue and file names, never torch (CLI start-up is measured in
    docs/performance.md, not here)."""
    code = ("import sys; from metalearn import data_cli; data_cli.main(['list']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={"METALEARN_DATA": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    for name in catalog.entries():
        assert f"\n{name} " in r.stdout
    assert r.stdout.strip().endswith("NO-TORCH")
    assert "missing" in r.stdout and "generated" in r.stdout


# ------------------------------------------------------------------ CUB
def cub_tgz(classes=8, per_class=6) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for c in range(classes):
            for k in range(per_class):
                img = Image.new("RGB", (40 + k, 30), (30 * c % 256, 20 * k, 100))
                jpg = io.BytesIO()
                img.save(jpg, format="JPEG")
                info = tarfile.TarInfo(f"CUB_200_2011/images/{c + 1:03d}.Bird_{c}/Bird_{c}_{k:04d}.jpg")
                info.size = len(jpg.getvalue())
                tar.addfile(info, io.BytesIO(jpg.getvalue()))
    return buf.getvalue()


def test_cub_downloads_with_download_true_and_has_chens_split(server, tmp_path, monkeypatch):
    from metalearn.config import CubConfig
    from metalearn.data.cub import build_cub, chen_split

    assert {s: len(v) for s, v in chen_split(200).items()} == {"train": 100, "val": 50, "test": 50}
    body = cub_tgz()
    server.files["/CUB_200_2011.tgz"] = body
    use_catalog(monkeypatch, tmp_path, {"CUB_200_2011.tgz": (body, [f"{server.url}/CUB_200_2011.tgz"])})
    store = build_cub(CubConfig(download=True, image_size=32, cache_dir=str(tmp_path / "c")))
    assert store.image_shape == (3, 32, 32) and store.num_classes == 8
    names = {s: [store.class_names[i] for i in ids] for s, ids in store.splits.items()}
    assert names == {"train": ["001.Bird_0", "003.Bird_2", "005.Bird_4", "007.Bird_6"],
                     "val": ["002.Bird_1", "006.Bird_5"], "test": ["004.Bird_3", "008.Bird_7"]}
    assert (tmp_path / "home" / "cub" / "CUB_200_2011" / "images").is_dir()


# ------------------------------------------------------------------ prepare from an ImageNet-style tree
def imagenet_tree(root: Path, per_class: int = 6, skip: str | None = None) -> Path:
    """ILSVRC2012 train's layout for miniImageNet's 100 classes: <wnid>/<wnid>_<number>.JPEG, numbers not in name
    order (so sorting by number matters), a few sizes and colours."""
    split = json.loads((prepared.SPLIT_DIR / "mini_imagenet.json").read_text())
    rng = np.random.default_rng(0)
    for s in ("train", "val", "test"):
        for c, wnid in enumerate(split[s]):
            if wnid == skip:
                continue
            (root / wnid).mkdir(parents=True)
            for k, number in enumerate((3, 25, 100, 7, 1000, 12)[:per_class]):
                a = rng.integers(0, 255, (20 + 3 * k, 24, 3), dtype=np.uint8)
                a[..., 0] = 10 * k + c
                Image.fromarray(a).save(root / wnid / f"{wnid}_{number}.JPEG", quality=90)
    return root


def lists(tmp_path: Path, positions=(1, 2, 3, 4, 5, 6)) -> Path:
    """The test's image lists: the same positions for every class (the real ones reach the 1300th file)."""
    split = json.loads((prepared.SPLIT_DIR / "mini_imagenet.json").read_text())
    mask = format(sum(1 << (p - 1) for p in positions), "x")
    path = tmp_path / "lists.json"
    path.write_text(json.dumps({"images": {w: mask for s in ("train", "val", "test") for w in split[s]}}))
    return path


def test_the_shipped_lists_are_ravi_and_larochelles():
    """600 images for each of the 100 classes, the split's own classes; positions 1..1300 (ImageNet's largest)."""
    split = json.loads((prepared.SPLIT_DIR / "mini_imagenet.json").read_text())
    chosen = json.loads((prepared.SPLIT_DIR / "mini_imagenet_images.json").read_text())["images"]
    assert set(chosen) == {w for s in ("train", "val", "test") for w in split[s]}
    assert {bin(int(m, 16)).count("1") for m in chosen.values()} == {600}
    assert max(int(m, 16).bit_length() for m in chosen.values()) == 1300
    assert int(chosen["n01532829"], 16) & 0b11111 == 0b10000  # n0153282900000005.jpg is the first
    tiered = json.loads((prepared.SPLIT_DIR / "tiered_imagenet.json").read_text())
    assert {s: len(v) for s, v in tiered["lists"].items()} == tiered["classes"] == {"train": 351, "val": 97, "test": 160}
    assert len(tiered["categories"]) == 34
    assert not ({w for w, _ in tiered["lists"]["train"]} & {w for w, _ in tiered["lists"]["test"]})


def test_prepare_picks_files_by_number_and_gives_the_same_digest_twice(tmp_path):
    tree = imagenet_tree(tmp_path / "imagenet")
    a = prepared.prepare("mini_imagenet", tree, tmp_path / "a", 28, lists=lists(tmp_path, (1, 3)))
    b = prepared.prepare("mini_imagenet", tree, tmp_path / "b", 28, lists=lists(tmp_path, (1, 3)))
    assert a["digest"] == b["digest"]
    assert (tmp_path / "a" / "images.npy").read_bytes() == (tmp_path / "b" / "images.npy").read_bytes()
    assert (tmp_path / "a" / "store.json").read_bytes() == (tmp_path / "b" / "store.json").read_bytes()
    assert a["counts"] == [2] * 100 and a["resize"] == "bilinear" and len(a["split"]["train"]) == 64
    images = prepared.load_images(tmp_path / "a")
    first = a["classes"][0]
    # position 1 is <wnid>_3.JPEG, position 3 is <wnid>_12 (numbers 3, 7, 12, 25, 100, 1000): not name order
    with Image.open(tree / first / f"{first}_12.JPEG") as img:
        assert np.array_equal(images[1], prepared.resize(img, 28, "bilinear"))
    prepared.verify(tmp_path / "a")
    store_json = tmp_path / "a" / "store.json"
    edited = json.loads(store_json.read_text()) | {"image_size": 32}
    store_json.write_text(json.dumps(edited))
    with pytest.raises(Exception, match="edited after it was prepared"):
        prepared.verify(tmp_path / "a")


def test_prepare_names_a_missing_class_and_a_short_one(tmp_path):
    from metalearn.errors import MetalearnError

    tree = imagenet_tree(tmp_path / "imagenet", skip="n01930112")
    with pytest.raises(MetalearnError, match="class folder n01930112 is missing"):
        prepared.prepare("mini_imagenet", tree, tmp_path / "out", 28, lists=lists(tmp_path))
    short = imagenet_tree(tmp_path / "short", per_class=4)
    with pytest.raises(MetalearnError, match="has 4 images but miniImageNet takes its 6th"):
        prepared.prepare("mini_imagenet", short, tmp_path / "out", 28, lists=lists(tmp_path))
    assert not (tmp_path / "out" / "store.json").exists()


def test_prepare_replaces_only_its_own_store(tmp_path):
    from metalearn.errors import MetalearnError

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "images.npy").write_bytes(b"someone else's")
    with pytest.raises(MetalearnError, match="not a metalearn store"):
        prepared.prepare("mini_imagenet", imagenet_tree(tmp_path / "imagenet"), tmp_path / "out", 28,
                         lists=lists(tmp_path))
    assert (tmp_path / "out" / "images.npy").read_bytes() == b"someone else's"


@pytest.mark.e2e
def test_train_on_a_prepared_store_then_test_it_cross_domain_on_cub(tmp_path, monkeypatch):
    """The done-means of issue 62 end to end: prepare miniImageNet from the tree, train on it (dataset.root unset:
    the default root), score the run on CUB's test split (cross-domain, marked), and CUB trains on its own."""
    home = tmp_path / "home"
    env_root = home / "mini_imagenet"
    prepared.prepare("mini_imagenet", imagenet_tree(tmp_path / "imagenet"), env_root, 28, lists=lists(tmp_path))
    cub = tmp_path / "cub"
    with tarfile.open(fileobj=io.BytesIO(cub_tgz(classes=20, per_class=5)), mode="r:gz") as tar:
        tar.extractall(cub, filter="data")
    monkeypatch.setenv("METALEARN_DATA", str(home))  # the CLIs below inherit it
    if True:
        small = ["debug=smoke", "queries=3", "test.episodes=5", "val.episodes=5", "dataset.image_size=28"]
        r = cli("metalearn-train", "dataset=mini_imagenet", *small, "run_dir=mini", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        summary = json.loads((tmp_path / "mini" / "summary.json").read_text())
        assert summary["status"] == "completed"
        e = cli("metalearn-eval", "run=mini", "dataset=cub", f"dataset_root={cub}", "episodes=5", "queries=3", cwd=tmp_path)
        assert e.returncode == 0, e.stderr[-2000:]
        assert "on cub (cross-domain: trained on mini_imagenet) test 5-way 1-shot" in e.stdout
        result = next((tmp_path / "mini" / "eval").glob("cross-cub_test_5w1s_*.json"))
        assert json.loads(result.read_text())["cross_domain"] == {"trained_on": "mini_imagenet", "tested_on": "cub"}
        r = cli("metalearn-train", "dataset=cub", f"dataset.root={cub}", *small, "run_dir=cubrun", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        g = cli("metalearn-eval", "run=cubrun", "dataset=omniglot", "dataset_root=/nonexistent", "episodes=5",
                cwd=tmp_path)
        assert g.returncode == 2 and "not found in /nonexistent" in g.stderr and "Traceback" not in g.stderr


def test_bilinear_is_opencvs_fixed_point_arithmetic():
    """prepare's bilinear is cv2.resize's INTER_LINEAR for uint8 (experiments/resize_difference.py compares it with
    OpenCV itself: identical on 99 photos). Two cases worked by hand: a flat image stays flat, and halving a side
    averages each 2x2 block, rounding half up ((a + b + c + d + 2) >> 2, the vector path's rounding)."""
    flat = np.full((37, 53, 3), 173, dtype=np.uint8)
    assert (prepared.opencv_linear(flat, 20) == 173).all()
    a = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    blocks = a.reshape(4, 2, 4, 2, 3).astype(np.int64).sum(axis=(1, 3))
    assert np.array_equal(prepared.opencv_linear(a, 4), ((blocks + 2) >> 2).astype(np.uint8))


def test_prepare_tiered_imagenet_keeps_every_image_and_the_categories(tmp_path):
    """Ren et al.'s lists name classes and their categories; every file of a class goes in, resized bicubic, and
    the store reads back as dataset=tiered_imagenet with each class's category for within-category episodes."""
    from metalearn.config import MiniImageNetConfig
    from metalearn.data.tiered_imagenet import build_tiered_imagenet

    facts = {"lists": {"train": [["n001", "c1"], ["n002", "c1"], ["n003", "c2"]], "val": [["n004", "c3"]],
                       "test": [["n005", "c4"], ["n006", "c4"]]},
             "categories": {"c1": "bird", "c2": "dog", "c3": "tool", "c4": "fruit"}}
    (tmp_path / "tiered.json").write_text(json.dumps(facts))
    tree = tmp_path / "imagenet"
    for i in range(1, 7):
        (tree / f"n00{i}").mkdir(parents=True)
        for k in range(2 + i):  # classes of different sizes
            Image.new("RGB", (30 + k, 20), (40 * i, 10 * k, 0)).save(tree / f"n00{i}" / f"n00{i}_{k + 1}.JPEG")
    index = prepared.prepare("tiered_imagenet", tree, tmp_path / "out", 16, lists=tmp_path / "tiered.json")
    assert index["resize"] == "bicubic" and index["counts"] == [3, 4, 5, 6, 7, 8]
    assert index["categories"] == ["bird", "bird", "dog", "tool", "fruit", "fruit"]
    store = build_tiered_imagenet(MiniImageNetConfig(name="tiered_imagenet", root=str(tmp_path / "out"),
                                                     image_size=16, cache_dir=str(tmp_path / "c")))
    assert store.group_by == "superclass" and store.class_groups[4] == "fruit"
    assert {s: [store.class_names[c] for c in v] for s, v in store.splits.items()} == {
        "train": ["n001", "n002", "n003"], "val": ["n004"], "test": ["n005", "n006"]}
    assert store.images.shape == (33, 3, 16, 16)
