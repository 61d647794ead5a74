"""User-facing errors: each says what is wrong and how to fix it.

The entry points print these as one message and exit with status 2, with no
traceback; anything else is a bug and keeps its traceback.
"""


class MetalearnError(Exception):
    """Bad input or a state the user must act on."""


def installed(module: str) -> bool:
    """Whether an optional package (an extra's) can be imported, without importing it: one answer for the
    trackers, the plots and the command-line check alike."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or hidden from the path
        return False


class TimeLimitReached(BaseException):
    """max_minutes ran out: the run checkpointed its current step and stops so a scheduler can requeue it.
    A BaseException, as KeyboardInterrupt is, so no `except Exception` (a sweep's job guard) swallows it."""

    exit_status = 124  # as timeout(1): the job ran out of time, resume=true continues it


class TrainingDiverged(MetalearnError):
    """The loss became non-finite; the last good checkpoint is kept."""


def one_line(e: BaseException) -> str:
    """An error as one line: ours as its message, anything else prefixed with its type."""
    text = " ".join(str(e).split())
    return text if isinstance(e, MetalearnError) else f"{type(e).__name__}: {text}"
