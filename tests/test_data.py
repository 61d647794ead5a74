"""The uint8 store: the synthetic generator and the Omniglot reader."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from metalearn.config import AlphabetLists, OmniglotConfig, SyntheticConfig
from metalearn.data.omniglot import build_omniglot
from metalearn.data.synthetic import build_synthetic, generate
from metalearn.errors import MetalearnError

SMALL_SPLIT = {"train": ["Balinese", "Early_Aramaic", "Korean", "Latin"], "val": ["Greek"],
               "test": ["Japanese_(katakana)", "Sanskrit", "Tagalog"]}


def omni_cfg(root, tmp_path, **kw) -> OmniglotConfig:
    kw.setdefault("split", "character")
    if isinstance(kw.get("alphabets"), dict):
        kw["alphabets"] = AlphabetLists(**kw["alphabets"])
    cfg = OmniglotConfig(root=str(root), archives=["images_background_small1", "images_background_small2"],
                         cache_dir=str(tmp_path / "cache"), **kw)
    return cfg


# ------------------------------------------------------------------ synthetic
def test_synthetic_default_is_large_and_split_disjoint():
    store = build_synthetic(SyntheticConfig())
    assert store.num_classes >= 1000 and store.images.dtype == torch.uint8
    assert store.images.shape == (1200 * 20, 1, 28, 28)
    sets = [set(store.splits[s].tolist()) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sum(map(len, sets)) == store.num_classes


def test_synthetic_is_deterministic_and_seeded():
    a, b = generate(20, 4, 28, seed=3), generate(20, 4, 28, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, generate(20, 4, 28, seed=4))


def test_synthetic_examples_are_perturbed_renderings_of_their_class():
    x = generate(30, 6, 28, seed=0).float().reshape(30, 6, -1)
    assert (x.amax(-1) > 200).all(), "every image has ink"
    within = torch.cdist(x, x).mean()  # same class, different renderings
    between = torch.cdist(x[:, 0], x[:, 0]).sum() / (30 * 29)
    assert 0 < within < between
    assert not torch.equal(x[0, 0], x[0, 1])


def test_synthetic_cache_is_reused(tmp_path):
    cfg = SyntheticConfig(num_classes=12, images_per_class=3, cache_dir=str(tmp_path))
    build_synthetic(cfg)
    files = list(tmp_path.glob("synthetic-*.pt"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    assert torch.equal(build_synthetic(cfg).images, build_synthetic(cfg).images)
    assert files[0].stat().st_mtime_ns == mtime


# ------------------------------------------------------------------ omniglot
def test_omniglot_small_benchmark_split(omniglot, tmp_path):
    store = build_omniglot(omni_cfg(omniglot, tmp_path, rotations=["train"], alphabets=SMALL_SPLIT))
    # small1: 136 characters, Greek (24) held out for validation -> 112 * 4 rotations
    assert len(store.splits["train"]) == 112 * 4
    assert len(store.splits["val"]) == 24
    assert len(store.splits["test"]) == 47 + 42 + 17  # katakana, Sanskrit, Tagalog
    names = store.class_names
    for split, alphabets in SMALL_SPLIT.items():
        assert {names[c].split("/")[0] for c in store.splits[split]} == set(alphabets)
    assert store.images.shape[1:] == (1, 28, 28) and (store.class_count == 20).all()
    # ink is bright after inversion: most pixels are background (dark)
    assert store.images.float().mean() < 60


def test_rotated_copies_stay_in_their_characters_split(omniglot, tmp_path):
    store = build_omniglot(omni_cfg(omniglot, tmp_path, split="character", split_seed=1))
    owner = {}
    for split, ids in store.splits.items():
        for c in ids:
            owner[store.class_names[c]] = split
    for name, split in owner.items():
        base = name.split("/rot")[0]
        assert owner[base] == split, f"{name} is in {split} but {base} is in {owner[base]}"
    # a rotated class really is its character rotated
    c = store.class_names.index(next(n for n in store.class_names if n.endswith("/rot90")))
    b = store.class_names.index(store.class_names[c].rsplit("/", 1)[0])
    img = lambda k: store.images[store.class_start[k]]  # noqa: E731
    assert torch.equal(img(c), torch.rot90(img(b), 1, dims=(1, 2)))


def test_reflections_add_mirrored_copies_of_every_class_in_their_split(omniglot, tmp_path):
    store = build_omniglot(omni_cfg(omniglot, tmp_path, rotations=["train"], reflections=["train"],
                                    alphabets=SMALL_SPLIT))
    # 112 training characters x 4 rotations x 2 (mirrored): the eight symmetries of the square
    assert len(store.splits["train"]) == 112 * 8
    assert len(store.splits["val"]) == 24 and len(store.splits["test"]) == 106  # untouched
    names = store.class_names
    train = {names[c] for c in store.splits["train"]}
    assert all(n + "/mirror" in train for n in train if not n.endswith("/mirror"))
    assert not any("/mirror" in names[c] for s in ("val", "test") for c in store.splits[s])
    img = lambda k: store.images[store.class_start[k]]  # noqa: E731
    for base in (next(iter(sorted(train))), next(n for n in sorted(train) if n.endswith("/rot270"))):
        m, b = names.index(base + "/mirror"), names.index(base)
        assert torch.equal(img(m), torch.flip(img(b), dims=(2,)))
    with pytest.raises(MetalearnError, match="dataset.reflections names unknown split"):
        build_omniglot(omni_cfg(omniglot, tmp_path, reflections=["training"], alphabets=SMALL_SPLIT))


def test_alphabet_split_keeps_alphabets_whole(omniglot, tmp_path):
    store = build_omniglot(omni_cfg(omniglot, tmp_path, split="alphabet", rotations=[]))
    per_split = {s: {store.class_names[c].split("/")[0] for c in ids} for s, ids in store.splits.items()}
    assert not (per_split["train"] & per_split["test"] or per_split["train"] & per_split["val"])


def test_zip_and_extracted_folder_read_the_same(omniglot, tmp_path):
    with zipfile.ZipFile(omniglot / "images_background_small1.zip") as z:
        z.extractall(tmp_path / "root")
    cfg_zip = OmniglotConfig(root=str(omniglot), archives=["images_background_small1"], rotations=[], split="character",
                             cache_dir=str(tmp_path / "c1"))
    cfg_dir = OmniglotConfig(root=str(tmp_path / "root"), archives=["images_background_small1"], rotations=[], split="character",
                             cache_dir=str(tmp_path / "c2"))
    a, b = build_omniglot(cfg_zip), build_omniglot(cfg_dir)
    assert a.class_names == b.class_names and torch.equal(a.images, b.images)


def test_missing_root_says_how_to_get_the_data(tmp_path, monkeypatch):
    with pytest.raises(MetalearnError, match="not found in .*metalearn-data get omniglot.*images_background.zip"):
        build_omniglot(OmniglotConfig(root=str(tmp_path), cache_dir=str(tmp_path)))
    monkeypatch.setenv("METALEARN_DATA", str(tmp_path / "home"))  # root unset: the data home's omniglot/
    with pytest.raises(MetalearnError, match=f"not found in {tmp_path / 'home' / 'omniglot'} \\(dataset.root is unset"):
        build_omniglot(OmniglotConfig(root=None, cache_dir=str(tmp_path)))


@pytest.mark.parametrize("content", [b"<!DOCTYPE html><html>Too many requests</html>", b"PK\x03\x04truncated"])
def test_html_page_or_truncated_archive_is_named(tmp_path, content):
    (tmp_path / "images_background.zip").write_bytes(content)
    with pytest.raises(MetalearnError, match="(HTML page|truncated, corrupt).*fetch (it|the file) again"):
        build_omniglot(OmniglotConfig(root=str(tmp_path), archives=["images_background"], cache_dir=str(tmp_path)))


def test_an_archive_that_is_not_the_original_is_named_by_its_md5(tmp_path):
    from PIL import Image

    with zipfile.ZipFile(tmp_path / "images_background_small1.zip", "w") as z:  # a valid zip, but not the original
        for c in (1, 2):
            img = Image.new("L", (105, 105), 255)
            with z.open(f"images_background_small1/Alpha/character{c:02d}/{c:04d}_01.png", "w") as f:
                img.save(f, format="PNG")
    cfg = dict(root=str(tmp_path), archives=["images_background_small1"], rotations=[], split="character",
               split_fractions=[1.0, 0.0, 0.0])
    with pytest.raises(MetalearnError, match=r"has MD5 \w+, not the e704a628b5459e08445c13499850abc4 .*"
                                             r"dataset.check_md5=false"):
        build_omniglot(OmniglotConfig(cache_dir=str(tmp_path / "a"), **cfg))
    store = build_omniglot(OmniglotConfig(cache_dir=str(tmp_path / "b"), check_md5=False, **cfg))
    assert store.num_classes == 2


def test_unreadable_image_names_the_file(tmp_path):
    char = tmp_path / "images_background" / "Alpha" / "character01"
    char.mkdir(parents=True)
    from PIL import Image

    Image.new("L", (105, 105), 255).save(char / "0001_01.png")
    (char / "0001_02.png").write_bytes(b"not a png")
    with pytest.raises(MetalearnError, match="0001_02.png"):
        build_omniglot(OmniglotConfig(root=str(tmp_path), archives=["images_background"], rotations=[], split="character",
                                      cache_dir=str(tmp_path / "c")))


def test_unknown_alphabet_lists_the_available_ones(omniglot, tmp_path):
    with pytest.raises(MetalearnError, match="Klingon.*Available"):
        build_omniglot(omni_cfg(omniglot, tmp_path, alphabets={"train": ["Klingon"], "val": [], "test": []}))


def test_split_stats_come_from_the_train_split(omniglot, tmp_path):
    store = build_omniglot(omni_cfg(omniglot, tmp_path, rotations=[], alphabets=SMALL_SPLIT))
    ids = store.splits["train"]
    x = torch.cat([store.images[store.class_start[c]: store.class_start[c] + 20] for c in ids]).float() / 255
    assert np.isclose(store.mean, float(x.mean()), atol=1e-5)


# ------------------------------------------------------------------ omniglot standard splits
def write_fake_full_omniglot(root, images_per_character=2, drop=None):
    """Both full archives in their real layout (zip of <archive>/<alphabet>/characterNN/*.png), with the
    real alphabets and character counts; tiny blank images stand in for the drawings (so their MD5 is
    not the original's: readers of them pass check_md5=False)."""
    import io
    import zipfile

    from PIL import Image

    from metalearn.data.omniglot import standard_splits

    buf = io.BytesIO()
    Image.new("L", (8, 8), 255).save(buf, format="PNG")
    png = buf.getvalue()
    facts = standard_splits()
    for archive in ("background", "evaluation"):
        name = f"images_{archive}"
        with zipfile.ZipFile(root / f"{name}.zip", "w") as z:
            for alphabet, count in facts[archive].items():
                if alphabet == drop:
                    continue
                for c in range(1, count + 1):
                    for k in range(images_per_character):
                        z.writestr(f"{name}/{alphabet}/character{c:02d}/{c:04d}_{k:02d}.png", png)


@pytest.fixture(scope="module")
def full_omniglot(tmp_path_factory):
    root = tmp_path_factory.mktemp("omniglot_full")
    write_fake_full_omniglot(root)
    return root


def test_vinyals_split_has_the_standard_class_counts(full_omniglot, tmp_path):
    cfg = OmniglotConfig(root=str(full_omniglot), cache_dir=str(tmp_path), split="vinyals", check_md5=False)
    store = build_omniglot(cfg)
    assert {s: len(v) for s, v in store.splits.items()} == {"train": 1028 * 4, "val": 172 * 4, "test": 423 * 4}
    names = store.class_names
    test_chars = {names[c] for c in store.splits["test"] if "/rot" not in names[c]}
    assert "Gurmukhi/character42" in test_chars and "Gurmukhi/character41" not in test_chars
    val_alphabets = {names[c].split("/")[0] for c in store.splits["val"]}
    assert val_alphabets == {"Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)"}


def test_lake_split_is_background_for_training_and_evaluation_for_test(full_omniglot, tmp_path):
    cfg = OmniglotConfig(root=str(full_omniglot), cache_dir=str(tmp_path), split="lake", rotations=[], check_md5=False)
    store = build_omniglot(cfg)
    assert {s: len(v) for s, v in store.splits.items()} == {"train": 964, "val": 0, "test": 659}


def test_standard_split_on_incomplete_archives_is_a_clear_error(tmp_path):
    write_fake_full_omniglot(tmp_path, images_per_character=1, drop="Tibetan")
    cfg = OmniglotConfig(root=str(tmp_path), cache_dir=str(tmp_path / "c"), split="vinyals", check_md5=False)
    with pytest.raises(MetalearnError, match=r"Tibetan \(0 of 42\).*dataset.split=character"):
        build_omniglot(cfg)


def test_stores_of_one_dataset_at_two_sizes_hold_the_same_images(omniglot, tmp_path):
    """An ensemble's members may render the images at other sizes; one plan must mean the same task in both."""
    small = build_omniglot(omni_cfg(omniglot, tmp_path, alphabets=SMALL_SPLIT))
    large = build_omniglot(omni_cfg(omniglot, tmp_path, alphabets=SMALL_SPLIT, image_size=32))
    assert large.images.shape[-1] == 32 and small.same_images(large) and large.same_images(small)
    other_split = build_omniglot(omni_cfg(omniglot, tmp_path, alphabets={**SMALL_SPLIT, "val": [],
                                                                         "train": SMALL_SPLIT["train"] + ["Greek"]}))
    assert not small.same_images(other_split)
    rotated = build_omniglot(omni_cfg(omniglot, tmp_path, alphabets=SMALL_SPLIT, rotations=["train"]))
    assert not small.same_images(rotated)
