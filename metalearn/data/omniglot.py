"""Omniglot from its original archives (or their extracted folders).

Layout inside every archive: <archive>/<alphabet>/characterNN/<id>_<drawer>.png,
105x105 black ink on white. Each character was drawn once by each of 20 people (the drawers);
the store keeps each image's drawer and each class's alphabet, for Lake et al.'s within-alphabet,
drawer-disjoint episodes (sampler.within=alphabet, sampler.disjoint_drawers=true). Images are decoded once, resized to image_size,
inverted (ink = bright) and cached. Splits are made at the character (or whole
alphabet) level *before* rotations are added, so a rotated copy of a character
always lands in that character's split. The standard splits (``vinyals``,
``lake``) are facts kept in splits/omniglot.json.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from metalearn.config import OmniglotConfig
from metalearn.data.cache import cached
from metalearn.data.catalog import file_spec, resolve_root
from metalearn.data.decode import check_md5, check_not_html
from metalearn.data.store import SPLITS, ImageStore, split_by_fractions
from metalearn.errors import MetalearnError
from metalearn.registry import DATASETS

FORMAT_VERSION = 2  # 2: each image's drawer
# MD5 of the original zips (brendenlake/omniglot, python/): the two full archives as torchvision
# lists them, the two small ones as released (checked on ../shared/data/omniglot's copies)
ARCHIVE_MD5 = {"images_background": "68d2efa1b9178cc56df9314c21c6e718",
               "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
               "images_background_small1": "e704a628b5459e08445c13499850abc4",
               "images_background_small2": "b75a71a51d3b13f821f212756fe481fd"}
FULL = ("images_background", "images_evaluation")  # the two full archives (the small ones are a subset of the first)


def how_to_get(archives: list[str] | tuple[str, ...] = FULL) -> str:
    """Where the archives this config reads come from: the command that fetches them, or the repository."""
    names = ", ".join(f"{a}.zip" for a in archives)
    small = {"images_background_small1", "images_background_small2"}
    if not set(archives) <= set(FULL) | small:
        return f"Put {names} (from the Omniglot repository, brendenlake/omniglot, folder python/) in dataset.root."
    gets = [g for g, part in (("omniglot", set(FULL)), ("omniglot_small", small)) if set(archives) & part]
    return (f"Run {' and '.join(f'`metalearn-data get {g}`' for g in gets)} (it puts {names} where dataset.root "
            f"defaults to), or put them, from the Omniglot repository (brendenlake/omniglot, folder python/), in "
            f"dataset.root, or set dataset.download=true.")


HOW_TO_GET = how_to_get()


@dataclass
class _Source:
    """One archive or extracted folder, and how to read its files."""

    name: str
    path: Path

    def files(self) -> list[tuple[str, str, str]]:
        """(alphabet, character, member) for every png, sorted."""
        out = []
        if self.path.is_dir():
            for p in sorted(self.path.glob("*/*/*.png")):
                out.append((p.parent.parent.name, p.parent.name, str(p)))
        else:
            check_not_html(self.path, HOW_TO_GET)
            try:
                with zipfile.ZipFile(self.path) as z:
                    names = z.namelist()
            except zipfile.BadZipFile as e:
                raise MetalearnError(f"{self.path} is not a readable zip archive ({e}); it may be truncated or an "
                                     f"HTML page saved in its place. Delete it and fetch it again. {HOW_TO_GET}") from None
            for m in sorted(names):
                parts = m.rstrip("/").split("/")
                if m.endswith(".png") and len(parts) >= 3:
                    out.append((parts[-3], parts[-2], m))
        return out

    def reader(self) -> tuple[Callable[[str], bytes], Callable[[], None]]:
        """A function reading one member, and one closing it: the archive is opened once."""
        if self.path.is_dir():
            return (lambda m: Path(m).read_bytes()), (lambda: None)
        z = zipfile.ZipFile(self.path)
        return z.read, z.close


def _find_sources(cfg: OmniglotConfig) -> list[_Source]:
    root = resolve_root(cfg.root, "omniglot")
    if cfg.download:
        _download(root, cfg.archives)
    sources, missing = [], []
    for name in cfg.archives:
        for cand in (root / name, root / "omniglot-py" / name, root / f"{name}.zip"):
            if cand.is_dir() and any(cand.glob("*/*/*.png")) or cand.is_file():
                sources.append(_Source(name, cand))
                break
        else:
            missing.append(name)
    if missing:
        unset = "" if cfg.root else " (dataset.root is unset: the default root)"
        raise MetalearnError(f"Omniglot archive(s) {', '.join(missing)} not found in {root}{unset} (looked for NAME.zip "
                             f"and an extracted NAME/ folder). {how_to_get(cfg.archives)}")
    return sources


def _download(root: Path, archives: list[str]) -> None:
    """dataset.download=true: metalearn-data's fetch (mirrors, resume, SHA-256) for each archive not already there."""
    from metalearn.data.fetch import fetch

    for name in archives:
        if any(c.exists() for c in (root / name, root / "omniglot-py" / name)):
            continue
        try:
            spec = file_spec(f"{name}.zip")
        except KeyError:
            raise MetalearnError(f"dataset.download=true: {name}.zip has no known source; put it in {root}") from None
        fetch(spec, root)


def _decode(read: Callable[[str], bytes], source: _Source, member: str, size: int) -> np.ndarray:
    try:
        img = Image.open(io.BytesIO(read(member)))
        img.load()
    except (UnidentifiedImageError, OSError, zipfile.BadZipFile) as e:
        raise MetalearnError(f"cannot read image {member} in {source.path}: {e}. "
                             f"Replace the file or the archive it came from.") from None
    img = img.convert("L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return 255 - np.asarray(img, dtype=np.uint8)  # ink becomes bright


def _load_characters(sources: list[_Source], size: int, check: bool = True) -> dict:
    """Decode every character once: images sorted by character, with alphabet names."""
    seen: set[tuple[str, str]] = set()
    images, counts, names, alphabets, drawers = [], [], [], [], []
    for src in sources:
        if check and src.path.is_file() and src.path.name == f"{src.name}.zip" and src.name in ARCHIVE_MD5:
            check_md5(src.path, ARCHIVE_MD5[src.name],  # before decoding: a damaged zip is named as such
                      f"(An archive you re-packed yourself: dataset.check_md5=false.) {HOW_TO_GET}")
        by_char: dict[tuple[str, str], list[str]] = {}
        for alphabet, char, member in src.files():
            by_char.setdefault((alphabet, char), []).append(member)
        read, close = src.reader()
        try:
            for key in sorted(by_char):
                if key in seen:  # the small archives share Greek and Latin
                    continue
                seen.add(key)
                images.extend(_decode(read, src, m, size) for m in by_char[key])
                drawers.extend(drawer_of(m) for m in by_char[key])
                counts.append(len(by_char[key]))
                names.append(f"{key[0]}/{key[1]}")
                alphabets.append(key[0])
        finally:
            close()
    if not images:
        raise MetalearnError(f"no .png images found in {', '.join(str(s.path) for s in sources)}. {HOW_TO_GET}")
    return {"images": torch.from_numpy(np.stack(images))[:, None], "counts": torch.tensor(counts),
            "names": names, "alphabets": alphabets, "drawers": torch.tensor(drawers, dtype=torch.int16)}


def drawer_of(member: str) -> int:
    """The drawer in an Omniglot file name (``0851_07.png``: 7), or -1 for a name without one."""
    stem = member.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    tail = stem.rsplit("_", 1)[-1] if "_" in stem else ""
    return int(tail) if tail.isdigit() else -1


def alphabet_group(name: str) -> str:
    """A class's alphabet, with its rotation or mirroring: Korean/character05/rot90 -> Korean/rot90. A rotated
    alphabet is a new alphabet, as a rotated character is a new character: its characters resemble each other
    as the upright ones do, and never mix with upright ones in a within-alphabet episode."""
    parts = name.split("/")
    return "/".join([parts[0], *parts[2:]])


def standard_splits() -> dict:
    """The facts in splits/omniglot.json: each archive's alphabets with their character counts, and
    the Vinyals et al. split's validation and test alphabets (and characters)."""
    return json.loads((Path(__file__).parent / "splits" / "omniglot.json").read_text())


def _standard_split(kind: str, names: list[str], alphabets: list[str]) -> dict[str, np.ndarray]:
    """split=vinyals (Vinyals et al. 2016 / Snell et al. 2017) or split=lake (background / evaluation)."""
    facts = standard_splits()
    expected = {**facts["background"], **facts["evaluation"]}
    have = Counter(alphabets)
    short = {a: (have.get(a, 0), n) for a, n in expected.items() if have.get(a, 0) != n}
    if short:
        example = ", ".join(f"{a} ({got} of {n})" for a, (got, n) in list(short.items())[:3])
        raise MetalearnError(f"dataset.split={kind} is a standard split of the full Omniglot (1,623 characters in 50 "
                             f"alphabets) and needs both full archives, dataset.archives=[images_background,"
                             f"images_evaluation]; {len(short)} alphabets are missing or incomplete, e.g. {example}. "
                             f"For other archives use dataset.split=character or alphabet, or dataset.alphabets. "
                             f"{HOW_TO_GET}")
    alpha = np.array(alphabets)
    if kind == "lake":
        train = np.isin(alpha, list(facts["background"]))
        return {"train": np.flatnonzero(train), "val": np.array([], dtype=np.int64), "test": np.flatnonzero(~train)}
    v = facts["vinyals"]
    val = np.isin(alpha, v["val"])
    test = np.isin(alpha, v["test"]) | np.isin(np.array(names), v["test"])
    return {"train": np.flatnonzero(~val & ~test), "val": np.flatnonzero(val), "test": np.flatnonzero(test)}


def _split(cfg: OmniglotConfig, names: list[str], alphabets: list[str]) -> dict[str, np.ndarray]:
    lists = {s: list(getattr(cfg.alphabets, s)) for s in SPLITS}
    alpha = np.array(alphabets)
    if any(lists.values()):
        known = set(alphabets)
        for s, names in lists.items():
            unknown = [a for a in names if a not in known]
            if unknown:
                raise MetalearnError(f"dataset.alphabets.{s} names alphabets not in the archives read: {unknown}. "
                                     f"Available: {sorted(known)}")
        return {s: np.flatnonzero(np.isin(alpha, names)) for s, names in lists.items()}
    if cfg.split == "character":
        return split_by_fractions(len(alphabets), list(cfg.split_fractions), cfg.split_seed)
    if cfg.split == "alphabet":
        unique = sorted(set(alphabets))
        parts = split_by_fractions(len(unique), list(cfg.split_fractions), cfg.split_seed)
        return {s: np.flatnonzero(np.isin(alpha, [unique[i] for i in idx])) for s, idx in parts.items()}
    if cfg.split in ("vinyals", "lake"):
        return _standard_split(cfg.split, names, alphabets)
    raise MetalearnError(f"dataset.split={cfg.split!r} is not one of: vinyals, lake, character, alphabet")


Classes = tuple[torch.Tensor, np.ndarray, list[str], dict[str, np.ndarray], np.ndarray]
_TRANSFORMS = {
    "rotations": [(f"rot{90 * k}", lambda b, k=k: torch.rot90(b, k, dims=(2, 3))) for k in (1, 2, 3)],
    "reflections": [("mirror", lambda b: torch.flip(b, dims=(3,)))],
}


def _add_transformed_classes(images: torch.Tensor, counts: np.ndarray, names: list[str],
                             splits: dict[str, np.ndarray], drawers: np.ndarray, kind: str,
                             chosen: list[str]) -> Classes:
    """Append transformed copies of every class of the `chosen` splits as new classes.

    `kind` is "rotations" (90/180/270 degrees, Santoro et al.'s and Vinyals et al.'s class augmentation)
    or "reflections" (a mirror image). A rotated or mirrored character is a character no split contains,
    and each copy stays in its source class's split, so no split leaks into another. Reflections run
    after rotations: a split with both gets all eight symmetries of the square.
    """
    bad = [s for s in chosen if s not in SPLITS]
    if bad:
        raise MetalearnError(f"dataset.{kind} names unknown split(s) {bad}; use a subset of {list(SPLITS)}")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    new_images, new_counts, new_names, new_drawers = [images], list(counts), list(names), [drawers]
    splits = {k: list(v) for k, v in splits.items()}
    for split in chosen:
        for c in list(splits[split]):
            block = images[starts[c]: starts[c] + counts[c]]
            for suffix, transform in _TRANSFORMS[kind]:
                new_images.append(transform(block))
                new_drawers.append(drawers[starts[c]: starts[c] + counts[c]])
                splits[split].append(len(new_names))
                new_counts.append(int(counts[c]))
                new_names.append(f"{names[c]}/{suffix}")
    return (torch.cat(new_images), np.array(new_counts), new_names,
            {k: np.array(sorted(v), dtype=np.int64) for k, v in splits.items()}, np.concatenate(new_drawers))


@DATASETS.register("omniglot")
def build_omniglot(cfg: OmniglotConfig) -> ImageStore:
    sources = _find_sources(cfg)
    key = {"v": FORMAT_VERSION, "size": cfg.image_size,
           "sources": [[str(s.path.resolve()), os.path.getsize(s.path) if s.path.is_file() else 0,
                        os.path.getmtime(s.path)] for s in sources]}
    data = cached(cfg.cache_dir, "omniglot", key, lambda: _load_characters(sources, cfg.image_size, cfg.check_md5))
    counts = data["counts"].numpy()
    splits = _split(cfg, data["names"], data["alphabets"])
    classes = (data["images"], counts, data["names"], splits, data["drawers"].numpy().astype(np.int64))
    for kind in ("rotations", "reflections"):
        classes = _add_transformed_classes(*classes, kind=kind, chosen=list(getattr(cfg, kind)))
    images, counts, names, splits, drawers = classes
    return ImageStore.from_classes(images, counts, names, splits, invert=True,
                                   meta={"name": "omniglot", "archives": [s.name for s in sources]},
                                   class_groups=[alphabet_group(n) for n in names], group_by="alphabet",
                                   drawers=drawers)
