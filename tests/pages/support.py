"""Helpers of the pages' tests: a `skutag review` server in a subprocess, stopped after."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# The browser tests' screenshots: the README's (docs/img) are refreshed on purpose with
# SKUTAG_SCREENSHOTS=docs/img; otherwise they go to the temporary folder, never into the tree.
SCREENSHOTS = Path(os.environ.get("SKUTAG_SCREENSHOTS") or Path(tempfile.gettempdir()) / "skutag-screenshots")


@contextlib.contextmanager
def review_server(out: Path, *extra: str, who: str = "tester") -> Iterator[tuple[subprocess.Popen, str]]:
    """`skutag review OUT` on a free port of 127.0.0.1: (process, base url); killed after if still alive."""
    process = subprocess.Popen(
        [sys.executable, "-m", "skutag", "review", str(out), "--who", who, *extra],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stderr.readline()
        found = re.search(r"http://([^/]+)/", line)
        assert found, f"no address in {line!r}"
        url = f"http://{found.group(1)}/"
        _wait_for(url)
        yield process, url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stderr.close()


def _wait_for(url: str, timeout: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "api/queue", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def kill_hard(process: subprocess.Popen) -> None:
    """SIGKILL, as the OOM killer or a pulled plug would: no chance to flush or clean up."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
