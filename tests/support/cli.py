"""Run the real `skutag` CLI in a subprocess, as a user (or cron) would."""

from __future__ import annotations

import subprocess
import sys


def skutag(*args: object, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`python -m skutag ARGS...`, capturing text output; never raises on a non-zero exit."""
    return subprocess.run(
        [sys.executable, "-m", "skutag", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )
