"""Progress: a rich bar on a terminal, plain log lines otherwise (CI, files, pipes)."""

from __future__ import annotations

import logging
import sys

from metalearn.console import console, log


class Progress:
    def __init__(self, total: int, start: int, title: str):
        self.total, self.start, self.title = total, start, title
        self.bar = None
        self.interactive = sys.stderr.isatty()

    def __enter__(self) -> Progress:
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            # redrawn 4 times a second by rich's own thread, so the elapsed time moves during a long step
            self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                    console=console(), transient=False, refresh_per_second=4)
            self.bar.__enter__()
            self.task = self.bar.add_task(self.title, total=self.total, completed=self.start, info="")
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, step: int, stats: dict) -> None:
        info = f"loss {stats['loss']:.3f} acc {100 * stats['accuracy']:.1f}% {_rate(stats)}"
        line = f"step {step}/{self.total}  {info}  lr {stats['lr']:.2e}"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
            _to_log_files(line)  # the bar replaces the line on the terminal; train.log keeps every one
        else:
            log.info("%s", line)

    def tick(self, done: int, info: str = "") -> None:
        """Move the bar to `done` (a terminal only: a log gets no line per batch)."""
        if self.bar is not None:
            self.bar.update(self.task, completed=done, info=info)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text)
            _to_log_files(text)
        else:
            log.info("%s", text)


def _to_log_files(text: str) -> None:
    """An INFO line for the log's file handlers only (train.log), not the terminal."""
    if not log.isEnabledFor(logging.INFO):
        return
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, text, None, None)
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _rate(stats: dict) -> str:
    """The throughput entry of a metrics line: episodes/s, pairs/s or images/s, by what the method trains on."""
    for key, value in stats.items():
        if key.endswith("_per_s"):
            return f"{value:.1f} {key[: -len('_per_s')]}/s"
    return ""
