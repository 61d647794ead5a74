"""Writing files whole or not at all, and CSV tables. Imports nothing of the project.

Every file a run reads back (checkpoints, summary.json, config.yaml, results, caches) is written through
a temporary file in the same folder, flushed to disk, then renamed over the old one: a kill mid-write
leaves the old file intact and a `.<name>.<random>.tmp` beside it, which the next start removes
(`RunFolder.remove_orphans` knows these names).
"""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only be read by setting it,
    which would open a window for other threads' files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[IO]:
    """A file handle whose contents replace `path` only when the block ends without an exception. The file gets
    the permissions any other new file of the user gets (0666 less the umask), not mkstemp's private 0600: a run
    folder shared with a colleague is readable whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_csv(rows: list[dict], path: Path) -> None:
    """A CSV table whose columns are every key of every row, in order of first appearance."""
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with atomic_open(path, "w") as f:
        if fields:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)


def refuse_to_replace(path: Path, ours: bool, tool: str, overwrite: bool) -> None:
    """A command replaces only a file it wrote itself (`ours`, judged from the file's own content): anything else at
    `path` (a user's file that happens to share the name) needs overwrite=true."""
    from metalearn.errors import MetalearnError

    if path.exists() and not overwrite and (path.is_dir() or not ours):
        what = "a folder" if path.is_dir() else f"a file {tool} did not write"
        raise MetalearnError(f"out={path} is {what}; {tool} replaces only its own output. Give another out=, or "
                             f"overwrite=true to replace it")
