"""Downloading a catalogue file: mirrors in order, resumable, checked before it is put in place.

A download writes <root>/<name>.part. A dropped connection, a timeout or a full disk keep it, and the next
call continues it with an HTTP Range request (a server that ignores Range sends the whole file again, and
the part starts over). The finished part is hashed (SHA-256) and renamed to <name> only when it matches the
catalogue; a mismatch deletes that part, the only file this module wrote, names the URL that served it, and
tries the next mirror. Nothing else in the folder is touched. Standard library only (urllib): no new
dependency for what it does.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from metalearn.data.catalog import CHECKED, FileSpec, read_checked, stat_key
from metalearn.errors import MetalearnError
from metalearn.files import write_text

CHUNK = 1 << 20
TIMEOUT_S = 30.0  # per connection attempt and per read: a server that never answers costs this, then a line


class _Failed(Exception):
    """One mirror failed; the message says how (the caller tries the next one)."""


def sha256sum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def record_checked(root: Path, name: str) -> None:
    """Note that root/name matched its checksum, with the size and time it had, so `list` can say `checked`
    without hashing it again (a changed file is no longer `checked`)."""
    import json

    checked = read_checked(root)
    checked[name] = stat_key(root / name)
    write_text(root / CHECKED, json.dumps(checked, indent=1, sort_keys=True) + "\n")


def fetch(spec: FileSpec, root: Path, timeout: float = TIMEOUT_S, progress: bool = True) -> Path:
    """root/spec.name, downloaded (or already there) and matching its SHA-256; a MetalearnError otherwise."""
    final = root / spec.name
    if final.is_file():
        got = sha256sum(final)
        if got != spec.sha256:
            raise MetalearnError(f"{final} exists but its SHA-256 is {got}, not the {spec.sha256} of {spec.name}: it is "
                                 f"truncated or another version. metalearn-data does not delete files it did not write: "
                                 f"move it away and run the same command again.")
        record_checked(root, spec.name)
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MetalearnError(f"cannot create {root}: {e.strerror}. Give a writable folder with root=PATH.") from None
    part = root / f"{spec.name}.part"
    failures = []
    for url in spec.urls:
        try:
            _download(url, part, spec, timeout, progress)
        except _Failed as e:
            failures.append(f"{url}: {e}")
            continue
        got = sha256sum(part)
        if got != spec.sha256:
            part.unlink()
            failures.append(f"{url} served a file whose SHA-256 is {got}, not {spec.sha256} (the part file it wrote was "
                            f"deleted)")
            continue
        os.replace(part, final)
        record_checked(root, spec.name)
        return final
    kept = f" {part.name} is kept: the same command resumes it." if part.is_file() else ""
    raise MetalearnError(f"could not get {spec.name}: {'; '.join(failures)}.{kept} Without a network, download "
                         f"{spec.urls[0]} by hand and put it at {final} ({spec.size:,} bytes, SHA-256 {spec.sha256}).")


def _download(url: str, part: Path, spec: FileSpec, timeout: float, progress: bool) -> None:
    have = part.stat().st_size if part.is_file() else 0
    if have > spec.size:  # not a prefix of this file: ours to delete (we wrote it)
        part.unlink()
        have = 0
    if have == spec.size:
        return  # complete; the caller checks it
    request = urllib.request.Request(url, headers={"User-Agent": "metalearn-data", **(
        {"Range": f"bytes={have}-"} if have else {})})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the server says the range is past the end: start over
            part.unlink()
        raise _Failed(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise _Failed(f"no answer ({reason})" if isinstance(reason, TimeoutError)
                      else f"cannot connect ({reason})") from None
    with response:
        if have and response.status != 206:  # Range ignored: the whole file comes again
            have = 0
        mode = "ab" if have else "wb"
        written = have
        try:
            with open(part, mode) as out, _bar(spec, have, progress) as advance:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except TimeoutError:
                        raise _Failed(f"stopped answering after {written:,} of {spec.size:,} bytes") from None
                    except (ConnectionError, OSError, ValueError) as e:  # http.client.IncompleteRead is a ValueError
                        raise _Failed(f"connection dropped after {written:,} of {spec.size:,} bytes ({type(e).__name__})") \
                            from None
                    if not block:
                        break
                    _write(out, block)
                    written += len(block)
                    advance(len(block))
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise MetalearnError(f"the disk holding {part.parent} is full after {written:,} of {spec.size:,} bytes "
                                     f"of {spec.name} (kept in {part.name}); free {spec.size - written:,} bytes and run "
                                     f"the same command again to resume.") from None
            raise MetalearnError(f"cannot write {part}: {e.strerror}. Give a writable folder with root=PATH.") from None
    if written < spec.size:
        raise _Failed(f"connection closed after {written:,} of {spec.size:,} bytes")


def _write(out, block: bytes) -> None:
    """One chunk to the part file (a seam: the disk-full test makes it raise ENOSPC)."""
    out.write(block)


@contextlib.contextmanager
def _bar(spec: FileSpec, done: int, show: bool) -> Iterator:
    """A progress bar with size, speed and time left (rich, already a dependency), on stderr when it is a terminal."""
    if not show or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task(spec.name, total=spec.size, completed=done)
        yield lambda n: bar.advance(task, n)
