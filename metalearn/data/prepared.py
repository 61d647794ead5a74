"""miniImageNet and tieredImageNet made from the user's own ImageNet: the licensed route, no third-party pickle.

    metalearn-data prepare mini_imagenet imagenet=/path/to/ILSVRC2012/train     # <wnid>/<wnid>_<n>.JPEG folders

miniImageNet is Ravi & Larochelle's 100 classes with the 600 images each of their CSVs
(splits/mini_imagenet_images.json); tieredImageNet is Ren et al.'s 608 classes in 34 categories with every
training image of each class (splits/tiered_imagenet.json). The images are resized the way the circulating
pickles were made: Ren et al.'s code squashes each image to 84x84 with OpenCV's cv2.resize, bilinear
(INTER_LINEAR, their mini-imagenet-cache pickles) and bicubic (INTER_CUBIC, their tieredImageNet pickles), no
crop, no antialiasing. Here bilinear is OpenCV's fixed-point arithmetic redone in numpy (bit-identical on the
photos measured) and bicubic the same sampling in torch (one grey level off on 0.008% of values): docs/results.md
records the measurement, and how far other resizes land.

The output is the project's store: images.npy (uint8 N x H x W x 3, sorted by class) and store.json (the
classes, their counts, categories and split, how it was made, and a SHA-256 digest of both). It holds no path
and no date, so two users who prepare from the same ImageNet get byte-identical stores.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from metalearn.data.catalog import STORE_INDEX
from metalearn.data.fetch import sha256sum
from metalearn.errors import MetalearnError
from metalearn.files import atomic_open

FORMAT = "metalearn-store/1"
SPLITS = ("train", "val", "test")
RESIZES = ("bilinear", "bicubic", "area", "lanczos")
SPLIT_DIR = Path(__file__).parent / "splits"
IMAGENET_HINT = ("imagenet= is the ILSVRC2012 training set extracted to one folder per class "
                 "(<wnid>/<wnid>_<number>.JPEG), as ILSVRC2012_img_train.tar's class tars extract")


def mini_imagenet_plan(imagenet: Path, lists: Path | None = None) -> tuple[list[tuple[str, str, list[Path]]], dict]:
    """[(split, wnid, image files)] from Ravi & Larochelle's lists: the p-th file of a class, its files sorted by
    the number in their names, is the CSVs' <wnid><p as 8 digits>.jpg (as mini-imagenet-tools reads them)."""
    split = json.loads((SPLIT_DIR / "mini_imagenet.json").read_text())
    chosen = json.loads((lists or SPLIT_DIR / "mini_imagenet_images.json").read_text())["images"]
    plan = []
    for s in SPLITS:
        for wnid in split[s]:
            files = _class_files(imagenet, wnid)
            mask = int(chosen[wnid], 16)
            positions = [p + 1 for p in range(mask.bit_length()) if mask >> p & 1]
            if positions[-1] > len(files):
                raise MetalearnError(f"{imagenet / wnid} has {len(files)} images but miniImageNet takes its "
                                     f"{positions[-1]}th ({wnid}_<number>.JPEG sorted by number): the folder is "
                                     f"incomplete. {IMAGENET_HINT}")
            plan.append((s, wnid, [files[p - 1] for p in positions]))
    return plan, {"dataset": "mini_imagenet", "lists": "Ravi & Larochelle 2017 (train/val/test.csv)",
                  "resize": "bilinear"}


def tiered_imagenet_plan(imagenet: Path, lists: Path | None = None) -> tuple[list[tuple[str, str, list[Path]]], dict]:
    """[(split, wnid, image files)] from Ren et al.'s lists: every training image of each class, by name."""
    facts = json.loads((lists or SPLIT_DIR / "tiered_imagenet.json").read_text())
    plan = [(s, wnid, _class_files(imagenet, wnid)) for s in SPLITS for wnid, _ in facts["lists"][s]]
    category = {wnid: facts["categories"][cat] for s in SPLITS for wnid, cat in facts["lists"][s]}
    return plan, {"dataset": "tiered_imagenet", "lists": "Ren et al. 2018 (tiered_imagenet_split)",
                  "resize": "bicubic", "categories": category}


def _class_files(imagenet: Path, wnid: str) -> list[Path]:
    folder = imagenet / wnid
    if not folder.is_dir():
        raise MetalearnError(f"class folder {wnid} is missing from {imagenet}. {IMAGENET_HINT}")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".jpeg", ".jpg", ".png")]
    return sorted(files, key=_file_number)


def _file_number(p: Path) -> tuple[int, str]:
    tail = p.stem.rsplit("_", 1)[-1]
    return (int(tail) if tail.isdigit() else -1, p.name)


def resize(image, size: int, how: str) -> np.ndarray:
    """A PIL image -> uint8 [size, size, 3], squashed (no crop). bilinear: OpenCV's INTER_LINEAR in its own
    fixed-point arithmetic (opencv_linear); bicubic: OpenCV's INTER_CUBIC sampling (a = -0.75, no antialiasing) in
    torch; area: PIL's box filter (OpenCV's INTER_AREA, which mini-imagenet-tools uses); lanczos: PIL's Lanczos
    (what the loaders use for other datasets)."""
    from PIL import Image

    image = image.convert("RGB")
    if how == "bilinear":
        return opencv_linear(np.asarray(image, dtype=np.uint8), size)
    if how in ("area", "lanczos"):
        filt = Image.Resampling.BOX if how == "area" else Image.Resampling.LANCZOS
        return np.asarray(image.resize((size, size), filt), dtype=np.uint8)
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)[None].to(torch.float32)
    y = F.interpolate(x, size=(size, size), mode=how, align_corners=False, antialias=False)
    return y[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """cv2.resize's INTER_LINEAR taps along one axis: the two source indices and their 11-bit weights (the
    position in float32, as OpenCV computes it; clamped at the edges)."""
    fx = ((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    sx = np.floor(fx).astype(np.int64)
    fx = (fx - sx).astype(np.float32)
    edge = (sx < 0) | (sx >= src - 1)
    fx[edge] = 0
    sx = np.clip(sx, 0, src - 1)
    w0 = np.rint((np.float32(1) - fx) * np.float32(2048)).astype(np.int64)
    w1 = np.rint(fx * np.float32(2048)).astype(np.int64)
    return sx, np.minimum(sx + 1, src - 1), w0, w1


def opencv_linear(a: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, C] -> [size, size, C] as cv2.resize(a, (size, size)) computes it for uint8 images: the
    horizontal pass in integers (pixel x 2^11 weights), the vertical one with its vector path's rounding,
    (((S0 >> 4) * b0 >> 16) + ((S1 >> 4) * b1 >> 16) + 2) >> 2. Bit-identical to opencv-python-headless 5.1's
    output on 99 photos (experiments/resize_difference.py), without depending on OpenCV."""
    h, w = a.shape[:2]
    x0, x1, a0, a1 = _linear_taps(w, size)
    y0, y1, b0, b1 = _linear_taps(h, size)
    src = a.astype(np.int64)
    rows = src[:, x0] * a0[None, :, None] + src[:, x1] * a1[None, :, None]
    top, bottom = rows[y0] >> 4, rows[y1] >> 4
    out = ((top * b0[:, None, None] >> 16) + (bottom * b1[:, None, None] >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def prepare(name: str, imagenet: Path, out: Path, size: int = 84, how: str | None = None, lists: Path | None = None,
            report: Callable[[int, int], None] | None = None) -> dict:
    """Build the store for mini_imagenet or tiered_imagenet in `out`; returns its index."""
    from PIL import Image, UnidentifiedImageError

    if not imagenet.is_dir():
        raise MetalearnError(f"imagenet={imagenet} is not a folder. {IMAGENET_HINT}")
    plans = {"mini_imagenet": mini_imagenet_plan, "tiered_imagenet": tiered_imagenet_plan}
    if name not in plans:
        raise MetalearnError(f"metalearn-data prepare makes {' and '.join(plans)}, not {name!r}")
    if how is not None and how not in RESIZES:
        raise MetalearnError(f"resize={how} is not one of: {', '.join(RESIZES)}")
    _check_ours(out)
    plan, about = plans[name](imagenet, lists)
    how = how or about["resize"]
    total = sum(len(files) for *_, files in plan)
    out.mkdir(parents=True, exist_ok=True)
    images = np.lib.format.open_memmap(out / ".images.npy.tmp", mode="w+", dtype=np.uint8, shape=(total, size, size, 3))
    i = 0
    for _, _wnid, files in plan:
        for path in files:
            try:
                with Image.open(path) as img:
                    images[i] = resize(img, size, how)
            except (UnidentifiedImageError, OSError) as e:
                raise MetalearnError(f"cannot read {path} ({e}); replace it from ILSVRC2012_img_train.tar") from None
            i += 1
            if report:
                report(i, total)
    images.flush()
    del images
    index = {"format": FORMAT, "dataset": name, "image_size": size, "resize": how, "lists": about["lists"],
             "source": "ILSVRC2012 train", "classes": [w for _, w, _ in plan],
             "counts": [len(f) for *_, f in plan], "split": {s: [w for t, w, _ in plan if t == s] for s in SPLITS}}
    if "categories" in about:
        index["categories"] = [about["categories"][w] for _, w, _ in plan]
    (out / ".images.npy.tmp").replace(out / "images.npy")
    index["images_sha256"] = sha256sum(out / "images.npy")
    index["digest"] = digest(index)
    with atomic_open(out / STORE_INDEX, "w") as f:
        f.write(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


def _check_ours(out: Path) -> None:
    """prepare replaces only a store it made: images.npy beside no store.json of ours is someone else's."""
    if (out / "images.npy").exists() and read_index(out, must=False) is None:
        raise MetalearnError(f"{out} holds an images.npy that is not a metalearn store (no {STORE_INDEX}); "
                             f"metalearn-data does not replace files it did not write: give another out=PATH")


def digest(index: dict) -> str:
    """The store's digest: SHA-256 over its index without the digest itself (which names images.npy's SHA-256)."""
    body = {k: v for k, v in index.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_index(root: Path, must: bool = True) -> dict | None:
    path = root / STORE_INDEX
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        if must:
            raise MetalearnError(f"cannot read {path}: {e}. Prepare the store again with metalearn-data prepare") from None
        return None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        if must:
            raise MetalearnError(f"{path} is not a {FORMAT} index; prepare the store again with metalearn-data prepare")
        return None
    return index


def verify(root: Path) -> dict:
    """Re-hash a prepared store; a MetalearnError naming what differs."""
    index = read_index(root)
    got = sha256sum(root / "images.npy")
    if got != index["images_sha256"]:
        raise MetalearnError(f"{root / 'images.npy'} has SHA-256 {got}, not the {index['images_sha256']} its "
                             f"{STORE_INDEX} records: it changed after it was prepared. Prepare it again.")
    if digest(index) != index["digest"]:
        raise MetalearnError(f"{root / STORE_INDEX} was edited after it was prepared (its digest does not match); "
                             f"prepare the store again.")
    return index


def load_images(root: Path) -> np.ndarray:
    """The store's images, memory-mapped copy-on-write (pages read as episodes touch them; the file is never
    written), read as data: np.load never unpickles here."""
    try:
        return np.load(root / "images.npy", mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise MetalearnError(f"cannot read {root / 'images.npy'} ({e}); prepare the store again") from None



def store_classes(root: Path, name: str, size: int) -> dict:
    """A prepared store as the loaders' {"images", "counts", "names", "split"[, "groups"]}: read as it is at its
    own size, resized (Lanczos) into the cache at another image_size by the caller's cached()."""
    import torch

    from metalearn.data.decode import nchw, resize_array

    index = read_index(root)
    if index["dataset"] != name:
        raise MetalearnError(f"{root / STORE_INDEX} is a {index['dataset']} store, not {name}; give dataset={index['dataset']} "
                             f"or the folder of a {name} store")
    images = load_images(root)
    if images.shape[0] != sum(index["counts"]):
        raise MetalearnError(f"{root / 'images.npy'} holds {images.shape[0]} images, its index {sum(index['counts'])}; "
                             f"prepare the store again")
    if images.shape[1] == size:
        array = torch.from_numpy(np.ascontiguousarray(images))
    else:
        array = torch.from_numpy(np.stack([resize_array(np.asarray(a), size, 3) for a in images]))
    split_of = {w: s for s in SPLITS for w in index["split"][s]}
    out = {"images": nchw(array), "counts": torch.tensor(index["counts"]), "names": list(index["classes"]),
           "split": [split_of[w] for w in index["classes"]]}
    if "categories" in index:
        out["groups"] = list(index["categories"])
    return out
