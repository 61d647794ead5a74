"""User-facing errors: each says what is wrong and how to fix it.

The entry points print these as one message and exit with status 2, with no
traceback; anything else is a bug and keeps its traceback.
"""


class MetalearnError(Exception):
    """Bad input or a state the user must act on."""


class TrainingDiverged(MetalearnError):
    """The loss became non-finite; the last good checkpoint is kept."""
