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

COLUMNS = [
    ("epoch", "{}"),
    ("train_loss", "{:.4f}"),
    ("val_loss", "{:.4f}"),
    ("accuracy", "{:.3f}"),
    ("top5_accuracy", "{:.3f}"),
    ("macro_f1", "{:.3f}"),
    ("lr", "{:.2e}"),
    ("seconds", "{:.1f}"),
    ("images_per_s", "{:.1f}"),
]


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
        cells = [fmt.format(row[name]) for name, fmt in COLUMNS]
        if self.interactive:
            if not self._header_done:
                self.console.print("  ".join(f"{name:>12}" for name, _ in COLUMNS), style="bold")
                self._header_done = True
            self.console.print("  ".join(f"{c:>12}" for c in cells) + ("  *" if best else ""))
        else:
            pairs = " ".join(f"{name}={cell}" for (name, _), cell in zip(COLUMNS, cells, strict=True))
            self.say(pairs + (" (best)" if best else ""))
