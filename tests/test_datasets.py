"""The standard benchmarks and a user's own folders, each read from small fixtures written in the
real on-disk format (a few classes and images, or every class with one or two images)."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metalearn.config import CifarConfig, ImageFolderConfig, MiniImageNetConfig
from metalearn.data import build_store
from metalearn.data.cifar import build_cifar
from metalearn.data.image_folder import build_image_folder
from metalearn.data.mini_imagenet import build_mini_imagenet, standard_split
from metalearn.data.tiered_imagenet import build_tiered_imagenet
from metalearn.errors import MetalearnError
from metalearn.tasks.episodes import EpisodeSampler, TaskSpec, gather

CIFAR100 = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl",
    "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair",
    "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin",
    "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp",
    "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman",
    "worm",
]


def encoded(color: int, size: int = 12, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (size, size), (color, 255 - color, 7) if mode == "RGB" else color).save(buf, format=fmt)
    return buf.getvalue()


def colour_of(c: int, k: int) -> int:
    return (c * 7 + k * 3) % 250  # distinct per (class, image), so a misplaced image is visible


def assert_disjoint(store) -> None:
    sets = [set(v.tolist()) for v in store.splits.values()]
    assert sum(len(s) for s in sets) == len(set().union(*sets))


# ------------------------------------------------------------------ image_folder
def write_folders(root, classes=6, per_class=4):
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for k in range(per_class):
            fmt = "JPEG" if k % 2 else "PNG"
            (d / f"img{k}.{'jpg' if k % 2 else 'png'}").write_bytes(encoded(colour_of(c, k), fmt=fmt))
    (root / "empty").mkdir()  # no images: not a class
    (root / "notes.txt").write_text("not an image")


def test_image_folder_reads_one_class_per_folder(tmp_path):
    write_folders(tmp_path / "data")
    cfg = ImageFolderConfig(root=str(tmp_path / "data"), image_size=16, cache_dir=str(tmp_path / "c"),
                            split_fractions=[0.5, 0.17, 0.33])
    store = build_image_folder(cfg)
    assert store.class_names == [f"class_{c}" for c in range(6)] and store.image_shape == (3, 16, 16)
    assert {s: len(v) for s, v in store.splits.items()} == {"train": 3, "val": 1, "test": 2}
    assert_disjoint(store)
    assert int(store.images[store.class_start[2]][0, 8, 8]) == colour_of(2, 0)  # class 2's first image (PNG)
    b = gather(store, EpisodeSampler(store, "train", TaskSpec(3, 1, 2), 0).plans(0, 2))
    assert b.support.shape == (2, 3, 3, 16, 16)


def test_image_folder_split_file_and_grey_channels(tmp_path):
    write_folders(tmp_path / "data")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["class_0", "class_1", "class_2"], "val": ["class_3"],
                                 "test": ["class_4", "class_5"]}))
    cfg = ImageFolderConfig(root=str(tmp_path / "data"), image_size=8, channels=1, split_file=str(split),
                            cache_dir=str(tmp_path / "c"))
    store = build_store(cfg)
    assert store.image_shape == (1, 8, 8)
    assert [store.class_names[c] for c in store.splits["test"]] == ["class_4", "class_5"]
    split.write_text(json.dumps({"train": ["class_0", "klingon"]}))
    with pytest.raises(MetalearnError, match="klingon"):
        build_image_folder(cfg)


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(MetalearnError, match="does not exist"):
        build_image_folder(ImageFolderConfig(root=str(tmp_path / "nowhere"), cache_dir=str(tmp_path)))
    write_folders(tmp_path / "data", classes=2)
    (tmp_path / "data" / "class_1" / "broken.jpg").write_bytes(b"<html><body>404</body></html>")
    with pytest.raises(MetalearnError, match=r"broken.jpg \(it is an HTML page\)"):
        build_image_folder(ImageFolderConfig(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "c")))


# ------------------------------------------------------------------ mini_imagenet
@pytest.fixture(scope="module")
def mini_pickles(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    for s, wnids in standard_split().items():
        data = np.zeros((2 * len(wnids), 84, 84, 3), dtype=np.uint8)
        class_dict = {}
        for i, w in enumerate(wnids[::-1]):  # rows in a different order from the split lists
            class_dict[w] = [2 * i, 2 * i + 1]
            data[2 * i: 2 * i + 2] = int(w[1:]) % 251
        with open(root / f"mini-imagenet-cache-{s}.pkl", "wb") as f:
            pickle.dump({"image_data": data, "class_dict": class_dict}, f)
    return root


def test_mini_imagenet_pickles_give_the_standard_split(mini_pickles, tmp_path):
    store = build_mini_imagenet(MiniImageNetConfig(root=str(mini_pickles), cache_dir=str(tmp_path)))
    assert {s: len(v) for s, v in store.splits.items()} == {"train": 64, "val": 16, "test": 20}
    assert store.image_shape == (3, 84, 84) and store.num_classes == 100
    assert_disjoint(store)
    for s, wnids in standard_split().items():
        assert [store.class_names[c] for c in store.splits[s]] == wnids
    c = store.class_names.index("n01930112")
    assert int(store.images[store.class_start[c], 0, 0, 0]) == 1930112 % 251  # the right pixels for the class


def test_mini_imagenet_class_folders_and_ravi_csv_layouts(tmp_path):
    folders, csv_root = tmp_path / "folders", tmp_path / "csv"
    (csv_root / "images").mkdir(parents=True)
    for s, wnids in standard_split().items():
        rows = ["filename,label"]
        for w in wnids:
            (folders / w).mkdir(parents=True)
            (folders / w / f"{w}_0001.jpg").write_bytes(encoded(int(w[1:]) % 251, 84, "JPEG"))
            (csv_root / "images" / f"{w}00000001.jpg").write_bytes(encoded(int(w[1:]) % 251, 84, "JPEG"))
            rows.append(f"{w}00000001.jpg,{w}")
        (csv_root / f"{s}.csv").write_text("\n".join(rows) + "\n")
    a = build_mini_imagenet(MiniImageNetConfig(root=str(folders), image_size=32, cache_dir=str(tmp_path / "c1")))
    b = build_mini_imagenet(MiniImageNetConfig(root=str(csv_root), image_size=32, cache_dir=str(tmp_path / "c2")))
    assert a.meta["layout"] == "folders" and b.meta["layout"] == "csv"
    assert a.class_names == b.class_names and torch.equal(a.images, b.images)
    assert {s: len(v) for s, v in a.splits.items()} == {"train": 64, "val": 16, "test": 20}


def test_mini_imagenet_errors_say_which_files_are_needed(tmp_path, mini_pickles):
    with pytest.raises(MetalearnError, match="mini-imagenet-cache-train.pkl"):
        build_mini_imagenet(MiniImageNetConfig(root=str(tmp_path), cache_dir=str(tmp_path)))
    bad = tmp_path / "bad"
    bad.mkdir()
    for s in ("train", "val", "test"):
        (bad / f"mini-imagenet-cache-{s}.pkl").write_bytes((mini_pickles / f"mini-imagenet-cache-{s}.pkl").read_bytes())
    (bad / "mini-imagenet-cache-val.pkl").write_text("<!DOCTYPE html><html>quota exceeded</html>")
    with pytest.raises(MetalearnError, match="HTML page"):
        build_mini_imagenet(MiniImageNetConfig(root=str(bad), cache_dir=str(tmp_path / "c")))
    data = (mini_pickles / "mini-imagenet-cache-val.pkl").read_bytes()
    (bad / "mini-imagenet-cache-val.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(MetalearnError, match="truncated or corrupt"):
        build_mini_imagenet(MiniImageNetConfig(root=str(bad), cache_dir=str(tmp_path / "c")))


def test_a_data_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for s in ("train", "val", "test"):
        (tmp_path / f"mini-imagenet-cache-{s}.pkl").write_bytes(pickle.dumps({"image_data": Evil(), "class_dict": {}}))
    with pytest.raises(MetalearnError, match="not allowed in a data file"):
        build_mini_imagenet(MiniImageNetConfig(root=str(tmp_path), cache_dir=str(tmp_path / "c")))


# ------------------------------------------------------------------ cifar_fs, fc100
def write_cifar(root, per_class=(3, 1)):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    coarse = [i // 5 for i in range(100)]  # a stand-in superclass map: five consecutive classes each
    for part, n in zip(("train", "test"), per_class, strict=True):
        fine = [c for c in range(100) for _ in range(n)]
        data = np.array([[colour_of(c, k)] * 3072 for c in range(100) for k in range(n)], dtype=np.uint8)
        with open(folder / part, "wb") as f:
            pickle.dump({"data": data, "fine_labels": fine, "coarse_labels": [coarse[c] for c in fine]}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": CIFAR100, "coarse_label_names": [f"super{i}" for i in range(20)]}, f)
    return folder


def test_cifar_fs_and_fc100_splits(tmp_path):
    write_cifar(tmp_path)
    fs = build_cifar(CifarConfig(name="cifar_fs", root=str(tmp_path), cache_dir=str(tmp_path / "c")))
    assert {s: len(v) for s, v in fs.splits.items()} == {"train": 64, "val": 16, "test": 20}
    assert {fs.class_names[c] for c in fs.splits["test"]} >= {"baby", "worm", "sweet_pepper"}
    assert fs.image_shape == (3, 32, 32) and set(fs.class_count.tolist()) == {4}  # both halves merged
    assert_disjoint(fs)
    fc = build_cifar(CifarConfig(name="fc100", root=str(tmp_path), cache_dir=str(tmp_path / "c")))
    assert {s: len(v) for s, v in fc.splits.items()} == {"train": 60, "val": 20, "test": 20}
    assert sorted({c // 5 for c in fc.splits["test"].tolist()}) == [0, 7, 12, 14]  # whole superclasses
    c = fs.class_names.index("whale")
    assert int(fs.images[fs.class_start[c] + 1, 0, 0, 0]) == colour_of(c, 1)


def test_cifar_archive_is_checksummed(tmp_path):
    folder = write_cifar(tmp_path / "src")
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    with pytest.raises(MetalearnError, match="MD5 .* not the eb9058c3"):
        build_cifar(CifarConfig(root=str(tmp_path), cache_dir=str(tmp_path / "c")))
    (tmp_path / "cifar-100-python.tar.gz").write_text("<html><title>Error</title></html>")
    with pytest.raises(MetalearnError, match="HTML page"):
        build_cifar(CifarConfig(root=str(tmp_path), cache_dir=str(tmp_path / "c")))
    with pytest.raises(MetalearnError, match="cifar-100-python.tar.gz"):
        build_cifar(CifarConfig(root=str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "c")))


# ------------------------------------------------------------------ tiered_imagenet
def test_tiered_imagenet_released_pickles_and_class_folders(tmp_path, caplog):
    pk, fo = tmp_path / "pickles", tmp_path / "folders"
    pk.mkdir()
    sizes = {"train": 4, "val": 2, "test": 3}
    for s, n in sizes.items():
        labels = np.repeat(np.arange(n), 2)
        names = [f"n{s}{c:03d}" for c in range(n)]
        pngs = [np.frombuffer(encoded(colour_of(int(c), k), 84), dtype=np.uint8) for k, c in enumerate(labels)]
        with open(pk / f"{s}_images_png.pkl", "wb") as f:
            pickle.dump(pngs, f)
        with open(pk / f"{s}_labels.pkl", "wb") as f:
            pickle.dump({"label_specific": labels, "label_specific_str": names, "label_general": labels // 2}, f)
        for k, c in enumerate(labels):
            d = fo / s / names[c]
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{k}.png").write_bytes(encoded(colour_of(int(c), k), 84))
    a = build_tiered_imagenet(MiniImageNetConfig(name="tiered_imagenet", root=str(pk), cache_dir=str(tmp_path / "c")))
    b = build_tiered_imagenet(MiniImageNetConfig(name="tiered_imagenet", root=str(fo), cache_dir=str(tmp_path / "c")))
    assert {s: len(v) for s, v in a.splits.items()} == sizes
    assert a.class_names == b.class_names and torch.equal(a.images, b.images)
    assert_disjoint(a)
    assert "not the standard" in caplog.text  # a subset is reported, not silently taken for the benchmark
    with open(pk / "val_images_png.pkl", "wb") as f:  # a truncated image file: fewer images than labels
        pickle.dump(pngs[:1], f)
    with pytest.raises(MetalearnError, match="val_images_png.pkl has 1 images but val_labels.pkl 4 labels"):
        build_tiered_imagenet(MiniImageNetConfig(name="tiered_imagenet", root=str(pk), cache_dir=str(tmp_path / "d")))


@pytest.mark.parametrize("name", ["mini_imagenet", "tiered_imagenet", "cifar_fs", "fc100", "image_folder"])
@pytest.mark.e2e
def test_missing_root_is_a_clear_cli_error(tmp_path, name):
    from conftest import cli

    r = cli("metalearn-train", f"dataset={name}", "debug=smoke", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "dataset.root" in r.stderr
    if name != "image_folder":  # root unset: the data home's folder, and the command that fills it
        assert "metalearn-data " in r.stderr and str(Path(os.environ["METALEARN_DATA"])) in r.stderr


def test_image_folder_names_a_class_with_one_image_before_any_split(tmp_path):
    """Trap (issue 60): a class with one image gave "the test split of image_folder has only 1 class"."""
    write_folders(tmp_path / "data", classes=3, per_class=20)
    (tmp_path / "data" / "cat").mkdir()
    (tmp_path / "data" / "cat" / "only.png").write_bytes(encoded(7, fmt="PNG"))
    cfg = ImageFolderConfig(root=str(tmp_path / "data"), image_size=16, cache_dir=str(tmp_path / "c"))
    with pytest.raises(MetalearnError, match=r"class cat of .* has only 1 image; every class needs at least "
                                             r"shots\+queries images .*; add images to it or remove it"):
        build_image_folder(cfg)
