"""Progress of a run: a rich bar (images/s, ETA) on a terminal, periodic plain lines otherwise.

Cron and Airflow capture stderr into logs, where a redrawn bar is noise: without a tty
the reporter prints one line every `interval` seconds instead.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(
            f"{speed:,.1f} images/s (pipeline)" if speed else "- images/s", style="progress.data.speed"
        )


class ProgressReporter:
    """`with ProgressReporter(total) as progress: progress.advance(rows)`."""

    def __init__(
        self, total: int, *, enabled: bool = True, stream: TextIO | None = None, interval: float = 30.0
    ):
        self.total = total
        self.done = 0
        self.enabled = enabled and total > 0
        self.stream = stream or sys.stderr
        self.interval = interval
        self._bar: Progress | None = None
        self._started = self._last_line = time.perf_counter()

    def __enter__(self) -> ProgressReporter:
        if self.enabled and self.stream.isatty():
            self._bar = Progress(
                TextColumn("skutag run"),
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("run", total=self.total)
        self._started = self._last_line = time.perf_counter()
        return self

    def advance(self, rows: int) -> None:
        self.done += rows
        if self._bar is not None:
            self._bar.advance(self._task, rows)
        elif self.enabled and time.perf_counter() - self._last_line >= self.interval:
            self._line()

    def _line(self) -> None:
        now = time.perf_counter()
        self._last_line = now
        rate = self.done / max(now - self._started, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "?"
        percent = 100.0 * self.done / self.total
        print(
            f"skutag run: {self.done}/{self.total} images ({percent:.1f}%), {rate:.1f} images/s (pipeline), ETA {eta_text}",
            file=self.stream,
            flush=True,
        )

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self.enabled and exc[0] is None:
            self._line()
