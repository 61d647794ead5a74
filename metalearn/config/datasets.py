"""The datasets' typed configs (metalearn/data/ builds each), and how two runs' dataset configs are compared."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from metalearn.config.schema import option, schema

FRACTIONS = "train, val and test fractions"


@dataclass
class DatasetConfig:
    name: str = MISSING
    image_size: int = option(28, "the image side in pixels; Conv-4's four halvings need 16", low=16, high=1024)
    cache_dir: str = option("~/.cache/metalearn", "where the decoded image store is cached")


@schema("dataset", "synthetic_schema", "synthetic")
@dataclass
class SyntheticConfig(DatasetConfig):
    name: str = "synthetic"
    num_classes: int = option(1200, "synthetic classes", low=3)
    images_per_class: int = option(20, "synthetic images per class", low=2)
    generator_seed: int = option(0, "the seed the glyphs are drawn from")
    split_fractions: list[float] = option(help=FRACTIONS, low=0, factory=lambda: [0.7, 0.1, 0.2])


@dataclass
class AlphabetLists:
    train: list[str] = option(help="alphabets to train on (empty: the split's own)", factory=list)
    val: list[str] = option(help="alphabets held out for validation (empty: the split's own)", factory=list)
    test: list[str] = option(help="alphabets to test on (empty: the split's own)", factory=list)


@schema("dataset", "omniglot_schema", "omniglot")
@dataclass
class OmniglotConfig(DatasetConfig):
    name: str = "omniglot"
    root: str | None = option(None, "the folder holding the archives (null: <data home>/omniglot, where "
                                         "metalearn-data get omniglot puts them)")
    # archives (name.zip) or extracted folders under root, read in this order;
    # a character already read from an earlier archive is not read twice.
    archives: list[str] = option(help="archives or extracted folders under root, read in this order",
                                 factory=lambda: ["images_background", "images_evaluation"])
    download: bool = option(False, "download the archives into root when missing (metalearn-data get's fetch)")
    check_md5: bool = option(True, "compare the original zips with their known MD5")
    rotations: list[str] = option(help="splits whose characters also appear rotated by 90/180/270 degrees as new classes",
                                  factory=lambda: ["train", "val", "test"])
    reflections: list[str] = option(help="splits whose classes (rotated ones included) also appear mirrored as new "
                                         "classes", factory=list)
    split: str = option("vinyals", "vinyals | lake (standard, full archives) | character | alphabet (random, by seed)")
    split_fractions: list[float] = option(help=FRACTIONS, low=0, factory=lambda: [0.7, 0.1, 0.2])
    split_seed: int = option(0, "the split's seed", low=0)
    # explicit alphabet-level split; when any list is non-empty it replaces the random split
    alphabets: AlphabetLists = option(help="an explicit alphabet-level split", factory=AlphabetLists)


@schema("dataset", "mini_imagenet_schema", "mini_imagenet", "tiered_imagenet")
@dataclass
class MiniImageNetConfig(DatasetConfig):
    """mini_imagenet and tiered_imagenet: the standard splits, read from whichever released form is in root."""

    name: str = "mini_imagenet"
    root: str | None = option(None, "the folder holding a prepared store or a released form (pickles, class "
                                         "folders); null: <data home>/<name>, where metalearn-data prepare puts it")
    image_size: int = option(84, "the image side in pixels", low=16, high=1024)


@schema("dataset", "cifar_schema", "cifar_fs", "fc100")
@dataclass
class CifarConfig(DatasetConfig):
    """cifar_fs and fc100, both from CIFAR-100's python release."""

    name: str = "cifar_fs"
    root: str | None = option(None, "the folder holding cifar-100-python (null: <data home>/cifar100, where "
                                         "metalearn-data get cifar_fs puts it)")
    download: bool = option(False, "download CIFAR-100 into root when missing")
    image_size: int = option(32, "the image side in pixels", low=16, high=1024)


@schema("dataset", "image_folder_schema", "image_folder")
@dataclass
class ImageFolderConfig(DatasetConfig):
    name: str = "image_folder"
    root: str | None = option(None, "a folder with one sub-folder of images per class")
    image_size: int = option(84, "the image side in pixels", low=16, high=1024)
    channels: int = option(3, "1 (grey) | 3 (RGB)")
    split_file: str | None = option(None, 'JSON {"train": [class names], "val": [...], "test": [...]}; else fractions')
    split_fractions: list[float] = option(help=FRACTIONS, low=0, factory=lambda: [0.7, 0.1, 0.2])
    split_seed: int = option(0, "the split's seed", low=0)


@schema("dataset", "multi_schema", "multi")
@dataclass
class MultiSourceConfig(DatasetConfig):
    name: str = "multi"
    sources: list[str] = option(help="dataset options (configs/dataset/<name>.yaml) trained on together, one source an "
                                     "episode (Meta-Dataset's multi-source training)",
                                factory=lambda: ["omniglot_small", "synthetic"])
    sampling: str = option("uniform", "which source an episode comes from: uniform (each source alike) | proportional "
                                      "(to its training classes)", choices=("uniform", "proportional"))
    channels: int = option(1, "the run's channels: a source's images are converted to them (RGB -> grey by luma, "
                              "grey -> RGB by repeating)", low=1, high=3)
    roots: dict[str, Any] = option(help="where a source's files are, by source name, e.g. "
                                        "dataset.roots.omniglot_small=PATH (null: its default root)", factory=dict)


# dataset keys that say where the files are, not which classes: they may differ between runs that read the same data
WHERE_KEYS = ("root", "cache_dir", "download", "check_md5")


def data_difference(own: dict, theirs: dict, may_differ: tuple[str, ...] = ()) -> str | None:
    """How two runs' dataset configs differ outside `may_differ`, as an error message's middle
    ("dataset.a, dataset.b differ (dataset.a: X here, Y there)"), or None when they read the same classes."""
    differ = sorted(k for k in set(own) | set(theirs) if k not in may_differ and own.get(k) != theirs.get(k))
    if not differ:
        return None
    k = differ[0]
    return (f"dataset.{', dataset.'.join(differ)} differ (dataset.{k}: {str(own.get(k))[:60]} here, "
            f"{str(theirs.get(k))[:60]} there)")


@schema("dataset", "cub_schema", "cub")
@dataclass
class CubConfig(DatasetConfig):
    """CUB-200-2011 with Chen et al. 2019's class split."""

    name: str = "cub"
    root: str | None = option(None, "the folder holding CUB_200_2011.tgz or CUB_200_2011/ (null: "
                                    "<data home>/cub, where metalearn-data get cub puts it)")
    download: bool = option(False, "download CUB_200_2011.tgz into root when missing")
    check_sha256: bool = option(True, "compare the archive with its known SHA-256 before extracting it")
    image_size: int = option(84, "the image side in pixels", low=16, high=1024)
