"""SIGTERM and SIGINT inside a run: stop at once, cleanly, and say what was kept.

An eviction, `kubectl delete`, a scheduler's timeout or Ctrl-C sends SIGTERM or SIGINT.
`stop_on_signals` raises the first one as `Signalled` (a BaseException, which no `except
Exception` swallows) in the main thread, and the run turns it into `Interrupted` (exit 75,
EX_TEMPFAIL) once it has cleaned up: the engine stops taking work (its stages and decode workers are stopped by their
own cleanup), the writer aborts without committing a half unit, the lease is released (so
a replacement on any host starts at once), `--metrics-file` is written with exit code 75,
and the CLI prints one line saying how many parts were kept. Committed parts are never
lost: the rerun resumes from them. Later signals while stopping are ignored. A forked child
that inherited the handler dies of the signal as it would have without it.

Why 75 and not 143 (128 + SIGTERM): 75 is already the one code every documented
orchestrator setup retries (cron wrapper, Airflow, the Kubernetes podFailurePolicy), and a
stopped run is exactly that: transient, safe to retry, nothing published as complete.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from skutag.errors import TransientError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(TransientError):
    """The run was stopped by SIGTERM or SIGINT (exit 75): committed parts are kept, rerun to resume."""


class Signalled(BaseException):
    """Raised by the handler: a BaseException, like KeyboardInterrupt, so that no `except Exception`
    on the way (a decoder's, a model loader's) mistakes it for an input's fault; the run turns it into
    `Interrupted` once it has cleaned up."""

    def __init__(self, signal_name: str):
        super().__init__(f"stopped by {signal_name}")
        self.signal_name = signal_name


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """While inside: the first SIGTERM / SIGINT raises `Signalled` in the main thread. Yields the
    signals received, so the caller can tell an exception the signal caused on its way (raised
    inside a C extension's import, Python reports an ImportError) from an ordinary one."""
    if threading.current_thread() is not threading.main_thread():
        yield []  # signals are delivered to the main thread only: nothing to install from here
        return
    owner = os.getpid()
    fired: list[int] = []

    def handler(signum: int, frame) -> None:
        if os.getpid() != owner:  # a forked child: die of the signal, as without this handler
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if fired:
            return  # already stopping
        fired.append(signum)
        raise Signalled(signal.Signals(signum).name)

    previous = {number: signal.signal(number, handler) for number in SIGNALS}
    try:
        yield fired
    finally:
        for number, before in previous.items():
            signal.signal(number, before)


def signal_name(fired: list[int]) -> str:
    return f"stopped by {signal.Signals(fired[0]).name}"
