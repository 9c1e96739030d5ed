"""Run the real `skutag` CLI in a subprocess, as a user (or cron) would; or in this process (`invoke`), where
many calls would each pay a process start for nothing."""

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


def invoke(capsys, *args: str) -> tuple[int, str, str]:
    """Run `skutag ARGS` in this process; (exit code, stdout, stderr)."""
    from skutag.cli import main

    try:
        main([*args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
