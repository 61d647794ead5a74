"""What both console scripts share: logging to the console and the run folder, and
turning a MetalearnError into one clear message and exit status 2 (no traceback)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from metalearn.console import log, set_console_script
from metalearn.errors import MetalearnError

T = TypeVar("T")


def console_script(main: Callable[..., T]) -> Callable[..., T]:
    """Mark a console script's main().

    While it runs, work nobody waits for may be left to a detached process (`in_console_script`: the
    learning-curve PNG). Called as the program itself (from `__main__`: the installed command, `python -m`),
    it ends the process when done (end_process); called from other Python (a test), it returns."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> T:
        # the program itself, not watched: a profiler (cProfile -m) or debugger reports after main returns
        program = (sys._getframe(1).f_globals.get("__name__") == "__main__" and sys.getprofile() is None
                   and sys.gettrace() is None)
        before = set_console_script(True)
        try:
            result = main(*args, **kwargs)
        except SystemExit as e:
            if program:
                end_process(e.code)
            raise
        finally:
            set_console_script(before)
        if program:
            end_process(result)
        return result

    return wrapped


def end_process(code: object) -> None:
    """Exit as the interpreter would at the program's end, less tearing down its modules.

    That teardown frees, one by one, every object torch, Hydra and matplotlib made (~0.3 s of a 3.5 s smoke
    run here; its last garbage collection another ~1 s) for memory the exiting process returns anyway.
    What an exit owes is still done: the exit handlers run (logging's, the trackers', multiprocessing's),
    output is flushed, and every file was closed already (metalearn writes with `with` and atomic
    replaces). While another Python thread runs, the interpreter's own exit joins it: this returns, having
    only frozen the heap (the last collection skipped)."""
    import threading

    if threading.active_count() > 1:
        gc.freeze()
        return
    atexit._run_exitfuncs()
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be said on it
            stream.flush()
    os._exit(status)


def environment_error(e: OSError) -> MetalearnError:
    """A file-system failure (read-only folder, full disk, a file where a folder should be) in one line with
    the file it hit: the machine's state, not a bug, so no traceback."""
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    return MetalearnError(f"cannot write or read a file{where}: {e.strerror or e}. Free disk space, make the folder "
                          f"writable, or give another run_dir= / out folder.")


def out_of_memory(e: BaseException) -> MetalearnError:
    detail = " ".join(str(e).split())[:160]
    return MetalearnError(f"out of memory ({detail}): the settings ask for more than this machine has; lower the "
                          f"sizes (sampler.meta_batch, val.episodes, test.episodes, test.batch, the model's widths)")


def as_user_error(e: Exception) -> MetalearnError | None:
    """The errors a user acts on rather than a bug: ours, the file system's, running out of memory."""
    if isinstance(e, MetalearnError):
        return e
    if isinstance(e, OSError):
        return environment_error(e)
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or (
            isinstance(e, RuntimeError) and "can't allocate memory" in str(e)):
        return out_of_memory(e)
    return None


def report_errors(fn: Callable[[], T], multirun: bool = False,
                  on_error: Callable[[BaseException], object] | None = None) -> T | None:
    """Run fn; a user's error (ours, the file system's, out of memory) becomes `error: ...` and exit status 2.

    on_error(e) records any failure (the run folder's summary.json says failed, with the reason) before
    the exit. In a sweep the failed job is only logged, so the other jobs go on."""
    try:
        return fn()
    except Exception as e:
        err = as_user_error(e)
        if err is None:
            if on_error is not None:
                on_error(e)
            raise
        log.error("error: %s", err)
        if on_error is not None:
            on_error(err)
        if multirun:
            return None
        sys.exit(2)
    except BaseException as e:  # Ctrl-C, a time limit: recorded, then handled by the caller as before
        if on_error is not None:
            on_error(e)
        raise


def keys_help(defaults: dict[str, str | None], meanings: dict[str, str], required: tuple[str, ...]) -> str:
    """The == Keys == section of a key=value tool's --help: each key, its default (or required), its meaning."""
    lines = ["== Keys ==", "key=value on the command line", ""]
    for key, default in defaults.items():
        shown = "(required)" if key in required else ("null" if default is None else default)
        lines.append(f"  {key}={shown}  {meanings[key]}")
    return "\n".join(lines) + "\n"


def parse_key_values(argv: list[str], tool: str, defaults: dict[str, str | None],
                     required: tuple[str, ...], usage: str) -> dict[str, str | None]:
    """key=value arguments of a tool that needs no config composition (metalearn-predict, metalearn-export):
    each a known key (`defaults`), the `required` ones given; anything else is one MetalearnError."""
    args = dict(defaults)
    for a in argv:
        key, eq, value = a.partition("=")
        if not eq or key not in defaults:
            raise MetalearnError(f"{a!r} is not a key=value argument of {tool}; its keys are: {', '.join(defaults)}")
        args[key] = value
    missing = [k for k in required if not args.get(k)]
    if missing:
        raise MetalearnError(f"give {', '.join(f'{k}=' for k in missing)} ({usage})")
    return args
