"""metalearn-data: get, check and prepare every benchmark.

    metalearn-data list                                    # every dataset: source, licence, size, root, state
    metalearn-data get omniglot                            # download (mirrors, resumable, SHA-256-checked)
    metalearn-data get cub root=/data/cub                  # somewhere else than the default root
    metalearn-data verify omniglot                         # hash the files again against the known checksums
    metalearn-data prepare mini_imagenet imagenet=/data/ILSVRC2012/train   # miniImageNet from your ImageNet
    metalearn-data prepare tiered_imagenet imagenet=/data/ILSVRC2012/train out=/data/tiered

A dataset's default root is <data home>/<folder>, data home being $METALEARN_DATA or ~/.cache/metalearn/data:
`get` and `prepare` put files there, and `metalearn-train dataset=NAME` reads from there when dataset.root is
unset. States: missing, partial, present (files there, not hashed yet), checked (hashed, matching; the
record is in .metalearn-checked.json), prepared (a store made by `prepare`). Keys: root=PATH (get, verify),
timeout=SECONDS (get: per connection and read, default 30), imagenet=PATH, out=PATH, image_size=84,
resize=bilinear|bicubic|area|lanczos (prepare; the default is how the circulating pickles were resized).
Bad input: one line and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from metalearn.data.catalog import STORE_INDEX, DatasetEntry, data_home, entries, entry, resolve_root, state
from metalearn.data.fetch import fetch, record_checked, sha256sum
from metalearn.errors import MetalearnError

COMMANDS = ("list", "get", "verify", "prepare")
KEYS = {"list": set(), "get": {"root", "timeout"}, "verify": {"root"},
        "prepare": {"imagenet", "out", "image_size", "resize"}}


def human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def show_list() -> None:
    rows = [("dataset", "state", "size", "root", "source", "licence")]
    for e in entries().values():
        where = resolve_root(None, e.name) if e.folder else None
        size = human(e.size) if e.size else "-"
        rows.append((e.name, state(e, where), size, str(where) if where else "-", e.source, e.licence))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    print(f"\ndata home: {data_home()} ($METALEARN_DATA); get one: metalearn-data get NAME")


def get(e: DatasetEntry, root: Path | None, timeout: float) -> None:
    if e.kind == "prepare":
        raise MetalearnError(f"{e.name} has no download (ImageNet's terms do not allow re-hosting it): make it from "
                             f"your ImageNet with `metalearn-data prepare {e.name} imagenet=/path/to/ILSVRC2012/train`")
    if e.kind in ("generated", "yours"):
        raise MetalearnError(f"{e.name} has nothing to get: it is {e.source}")
    for spec in e.files:
        path = fetch(spec, root, timeout=timeout)
        print(f"{path}: {human(spec.size)}, SHA-256 {spec.sha256[:16]}... checked")
    print(f"{e.name} is ready in {root}: metalearn-train dataset={e.name}"
          + ("" if root == resolve_root(None, e.name) else f" dataset.root={root}"))


def verify(e: DatasetEntry, root: Path | None) -> None:
    from metalearn.data import prepared

    if e.kind in ("generated", "yours"):
        raise MetalearnError(f"{e.name} has no files to verify: it is {e.source}")
    if e.kind == "prepare":
        index = prepared.verify(root)
        record_checked(root, STORE_INDEX)
        print(f"{root}: a {index['dataset']} store, {sum(index['counts']):,} images of {len(index['classes'])} classes, "
              f"digest {index['digest'][:16]}... checked")
        return
    bad = []
    for spec in e.files:
        path = root / spec.name
        if not path.is_file():
            bad.append(f"{spec.name} is missing (metalearn-data get {e.name})")
            continue
        got = sha256sum(path)
        if got != spec.sha256:
            bad.append(f"{spec.name} has SHA-256 {got}, not {spec.sha256}: truncated or another version")
        else:
            record_checked(root, spec.name)
            print(f"{path}: SHA-256 checked")
    if bad:
        raise MetalearnError(f"{e.name} in {root}: {'; '.join(bad)}")


def prepare(e: DatasetEntry, keys: dict[str, str]) -> None:
    from metalearn.data import prepared

    if e.kind != "prepare":
        raise MetalearnError(f"prepare makes mini_imagenet and tiered_imagenet from ImageNet; {e.name} is "
                             f"{'downloaded: metalearn-data get ' + e.name if e.kind == 'download' else e.source}")
    if "imagenet" not in keys:
        raise MetalearnError(f"prepare {e.name} needs imagenet=PATH, the ILSVRC2012 training set as one folder per class "
                             f"(<wnid>/<wnid>_<number>.JPEG)")
    out = Path(keys["out"]).expanduser() if "out" in keys else resolve_root(None, e.name)
    size = _int(keys.get("image_size", "84"), "image_size")
    shown = [-1]

    def report(done: int, total: int) -> None:
        pct = 100 * done // total
        if pct != shown[0] and (pct % 10 == 0 or done == total):
            shown[0] = pct
            print(f"  {done:,} of {total:,} images ({pct}%)", file=sys.stderr)

    index = prepared.prepare(e.name, Path(keys["imagenet"]).expanduser(), out, size, keys.get("resize"), report=report)
    record_checked(out, STORE_INDEX)
    print(f"{out}: {e.name}, {sum(index['counts']):,} images of {len(index['classes'])} classes at {size}x{size} "
          f"({index['resize']}), digest {index['digest']}")
    print(f"train on it: metalearn-train dataset={e.name}" + ("" if out == resolve_root(None, e.name)
                                                               else f" dataset.root={out}"))


def _int(value: str, key: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise MetalearnError(f"{key}={value} is not a whole number") from None


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise MetalearnError(f"timeout={value} is not a positive number of seconds")
    return seconds


def parse(argv: list[str]) -> tuple[str, str | None, dict[str, str]]:
    if not argv or argv[0] not in COMMANDS:
        raise MetalearnError(f"{argv[0]!r} is not a metalearn-data command; use one of: {', '.join(COMMANDS)} "
                             f"(metalearn-data --help)" if argv else "metalearn-data needs a command: "
                             + ", ".join(COMMANDS))
    command, rest = argv[0], argv[1:]
    name = None
    if command != "list":
        if not rest or "=" in rest[0]:
            raise MetalearnError(f"metalearn-data {command} needs a dataset name: {', '.join(entries())}")
        name, rest = rest[0], rest[1:]
    keys = {}
    for a in rest:
        if "=" not in a:
            raise MetalearnError(f"{a!r} is not a key=value setting (metalearn-data {command} "
                                 f"{'NAME ' if name else ''}key=value ...)")
        k, v = a.split("=", 1)
        if k not in KEYS[command]:
            raise MetalearnError(f"{k}= is not a key of metalearn-data {command}; its keys: "
                                 f"{', '.join(sorted(KEYS[command]))}")
        keys[k] = v
    return command, name, keys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or any(a in ("--help", "-h", "help") for a in argv):
        print(__doc__)
        return 0
    try:
        command, name, keys = parse(argv)
        if command == "list":
            show_list()
            return 0
        e = entry(name)
        root = resolve_root(keys.get("root"), name)
        if command == "get":
            get(e, root, _seconds(keys.get("timeout", "30")))
        elif command == "verify":
            verify(e, root)
        else:
            prepare(e, keys)
        return 0
    except MetalearnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: a download's .part file is kept, and the same command resumes it", file=sys.stderr)
        return 130


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
