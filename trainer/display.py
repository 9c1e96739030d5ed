"""What the user sees while training: a rich progress bar and a per-epoch table row on a terminal,
plain lines otherwise (logs, CI, torchrun). Only the main process speaks.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

# (history.csv name, short header, format)
COLUMNS = [
    ("epoch", "epoch", "{}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("val_loss", "val loss", "{:.4f}"),
    ("accuracy", "acc", "{:.3f}"),
    ("top5_accuracy", "top5", "{:.3f}"),
    ("macro_f1", "F1", "{:.3f}"),
    ("lr", "lr", "{:.2e}"),
    ("seconds", "s", "{:.1f}"),
    ("images_per_s", "img/s", "{:.1f}"),
]
WIDTHS = [max(len(header), 6) for _, header, _ in COLUMNS]


class Display:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True, highlight=False)
        self.interactive = enabled and sys.stderr.isatty()
        self._header_done = False

    def say(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, markup=False, soft_wrap=True)

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A transient progress bar on a terminal; a no-op elsewhere. Yields `advance(n)`."""
        if not self.interactive:
            yield lambda n: None
            return
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)

    def epoch(self, row: dict[str, Any], best: bool) -> None:
        if not self.enabled:
            return
        cells = [fmt.format(row[name]) for name, _, fmt in COLUMNS]
        if self.interactive:
            if not self._header_done:
                header = " ".join(f"{h:>{w}}" for (_, h, _), w in zip(COLUMNS, WIDTHS, strict=True))
                self.console.print(header, style="bold")
                self._header_done = True
            line = " ".join(f"{c:>{w}}" for c, w in zip(cells, WIDTHS, strict=True))
            self.console.print(line + (" *" if best else ""))
        else:
            pairs = " ".join(f"{name}={cell}" for (name, _, _), cell in zip(COLUMNS, cells, strict=True))
            self.say(pairs + (" (best)" if best else ""))
