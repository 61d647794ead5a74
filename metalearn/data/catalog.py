"""What each dataset is made of, where it comes from, and what this machine has of it (metalearn-data list).

The facts live in catalog.json: every downloadable file with its size, SHA-256 and mirrors, and every dataset
with the files it reads (or `prepare` for the two made from a user's ImageNet). Imports neither torch nor
numpy, so `metalearn-data list` answers at once.

A dataset's default root is <data home>/<folder> (data home: $METALEARN_DATA, else ~/.cache/metalearn/data):
where `metalearn-data get` puts files, and where `metalearn-train dataset=NAME` looks when dataset.root is unset.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from metalearn.errors import MetalearnError

CATALOG = Path(__file__).parent / "catalog.json"  # tests point this at their own table (checksums of their files)
CHECKED = ".metalearn-checked.json"  # in a root: the files metalearn-data verified, with the size and time it saw
STORE_INDEX = "store.json"  # a prepared store's index (metalearn.data.prepared)


@dataclass(frozen=True)
class FileSpec:
    name: str
    size: int
    sha256: str
    urls: tuple[str, ...]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    title: str
    source: str
    licence: str
    kind: str  # download | prepare | generated | yours
    folder: str | None
    files: tuple[FileSpec, ...]
    size: int  # bytes on disk: the files' sizes, or a prepared store's

    def __post_init__(self) -> None:
        if self.kind not in ("download", "prepare", "generated", "yours"):
            raise ValueError(f"catalog: {self.name} has unknown kind {self.kind!r}")


def _load() -> dict:
    return json.loads(CATALOG.read_text())


def entries() -> dict[str, DatasetEntry]:
    data = _load()
    files = {n: FileSpec(n, int(f["size"]), f["sha256"], tuple(f["urls"])) for n, f in data["files"].items()}
    out = {}
    for name, d in data["datasets"].items():
        specs = tuple(files[f] for f in d.get("files", []))
        out[name] = DatasetEntry(name, d["title"], d["source"], d["licence"], d["kind"], d.get("folder"), specs,
                                 int(d.get("size", sum(s.size for s in specs))))
    return out


def entry(name: str) -> DatasetEntry:
    known = entries()
    if name not in known:
        raise MetalearnError(f"unknown dataset {name!r}; metalearn-data knows: {', '.join(known)}")
    return known[name]


def file_spec(name: str) -> FileSpec:
    """One file of the catalogue by its name (a dataset builder fetching what it reads)."""
    for e in entries().values():
        for f in e.files:
            if f.name == name:
                return f
    raise KeyError(name)


def data_home() -> Path:
    return Path(os.environ.get("METALEARN_DATA") or "~/.cache/metalearn/data").expanduser()


def default_root(name: str) -> Path | None:
    """Where a dataset lives when dataset.root is unset: <data home>/<its folder>."""
    e = entries().get(name)
    return data_home() / e.folder if e is not None and e.folder else None


def resolve_root(root: str | None, name: str) -> Path | None:
    """dataset.root as given, else the dataset's default root (None for datasets without one)."""
    return Path(root).expanduser() if root else default_root(name)


def read_checked(root: Path) -> dict:
    try:
        return json.loads((root / CHECKED).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def state(e: DatasetEntry, root: Path | None) -> str:
    """missing | partial | present | checked | prepared | prepared, checked | generated | yours: from file names,
    sizes and the record `verify` and `get` leave (no file is hashed here: list stays instant)."""
    if e.kind in ("generated", "yours"):
        return e.kind
    if root is None or not root.is_dir():
        return "missing"
    if e.kind == "prepare":
        index = root / STORE_INDEX
        if not index.is_file():
            return "missing"
        checked = read_checked(root).get(STORE_INDEX)
        return "prepared, checked" if checked == stat_key(index) else "prepared"
    have = [f for f in e.files if (root / f.name).is_file() or _extracted(root, f.name)]
    if not have:
        return "partial (a .part to resume)" if any((root / f"{f.name}.part").is_file() for f in e.files) else "missing"
    if len(have) < len(e.files):
        return f"partial ({len(have)} of {len(e.files)} files)"
    checked = read_checked(root)
    if all((root / f.name).is_file() and checked.get(f.name) == stat_key(root / f.name) for f in e.files):
        return "checked"
    return "present"


def _extracted(root: Path, file_name: str) -> bool:
    """An archive the user extracted by hand (Omniglot's NAME/ folders, cifar-100-python/, CUB_200_2011/)."""
    stem = file_name.split(".")[0]
    return (root / stem).is_dir()
