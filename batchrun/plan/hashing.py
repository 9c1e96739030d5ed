"""The sha256 of version-less inputs (`--since`, `--retry-errors`), read in child processes with a time limit.

An input whose store gives no version (a URL without ETag or Last-Modified, a manifest row with
an empty version) is reused only when its bytes hash to the earlier row's sha256. Reading it is
an input's work like decoding it, so it runs where decoding runs, never in the main process:
`ContainedHasher` hands the inputs to up to `HASH_PROCESSES` child processes (fresh
interpreters that import this module only, as `batchrun.decode.contained` starts them), one
input at a time each, and kills a child whose input takes longer than the per-input time limit
(`--decode-timeout`). Such an input, or one over `--max-bytes` (not read past it where the size
is known first: S3, GCS and local files; over HTTP the size is judged after the read, as for
decoding), or one that cannot be read, has no hash: it counts as changed and is predicted, and its row says what went wrong
(`timeout`, `too_large`, `unreadable`). One slow or huge input costs the plan at most one time
limit, on one child, while the others go on.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

log = logging.getLogger(__name__)
HASH_PROCESSES = 8  # children reading at once (each reads one input at a time)
STARTUP_TIMEOUT_S = 300.0  # a child on a loaded node can take long to import its modules
DEFAULT_TIMEOUT_S = 120.0  # --decode-timeout's default


def sha256_one(uri: str, storage_options: dict[str, Any] | None, max_bytes: int | None) -> str | None:
    """The sha256 (hex) of one input's bytes, read but not decoded; None when it cannot be read or is
    larger than `max_bytes`."""
    from skutag import storage
    from skutag.entries import local_path

    digest = hashlib.sha256()
    try:
        if storage.is_remote(uri):
            digest.update(storage.read_object(uri, storage_options, max_bytes=max_bytes))
        else:
            with open(local_path(uri), "rb") as handle:
                read = 0
                while chunk := handle.read(1 << 20):
                    read += len(chunk)
                    if max_bytes is not None and read > max_bytes:
                        return None  # not hashed whole: predicted, and its row says too_large
                    digest.update(chunk)
    except Exception as exc:
        log.debug("cannot hash %s: %s", uri, exc)
        return None
    return digest.hexdigest()


class _Child:
    """One hashing child process and its socket."""

    def __init__(self, config: tuple[dict[str, Any] | None, int | None]):
        parent, child = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(child.fileno())],
            pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        child.close()
        self.conn = Connection(parent.detach())
        self.conn.send(config)

    def ready(self) -> _Child:
        if not self.conn.poll(STARTUP_TIMEOUT_S):
            self.kill()
            raise RuntimeError("a hashing process did not start")
        self.conn.recv()
        return self

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait(timeout=30)
        self.conn.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(None)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        self.conn.close()


class ContainedHasher:
    """`sha256_one` of many inputs, each in a child process and within `timeout_s` (None past it).

    Call it once per unit; its children live until `close` (started on first use: a night with no
    version-less input starts none), so a plan of many units pays for their start once."""

    def __init__(
        self,
        storage_options: dict[str, Any] | None = None,
        max_bytes: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        processes: int = HASH_PROCESSES,
    ):
        self.config, self.timeout_s, self.processes = (storage_options, max_bytes), timeout_s, processes
        self.idle: list[_Child] = []
        self.started = 0  # children alive (idle or busy)

    def __enter__(self) -> ContainedHasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, uris: Sequence[str]) -> list[str | None]:
        results: list[str | None] = [None] * len(uris)
        wanted = min(self.processes, len(uris)) - self.started
        if wanted > 0:  # they start side by side
            self.idle += [child.ready() for child in [_Child(self.config) for _ in range(wanted)]]
            self.started += wanted
        todo = deque(range(len(uris)))
        busy: dict[Connection, tuple[_Child, int, float]] = {}
        try:
            while todo or busy:
                while self.idle and todo:
                    child, index = self.idle.pop(), todo.popleft()
                    child.conn.send((index, uris[index]))
                    busy[child.conn] = (child, index, time.monotonic() + self.timeout_s)
                nearest = min(deadline for _, _, deadline in busy.values())
                for conn in wait(list(busy), timeout=max(0.0, nearest - time.monotonic())):
                    child, index, _ = busy.pop(conn)
                    try:
                        answered, digest = conn.recv()
                        results[answered] = digest
                        self.idle.append(child)
                    except (EOFError, OSError):  # the child died on it: a fresh one takes its place
                        log.warning("hashing %s killed its process; it is predicted instead", uris[index])
                        self._replace(child)
                now = time.monotonic()
                for conn, (child, index, deadline) in list(busy.items()):
                    if now >= deadline:
                        log.warning(
                            "reading %s to hash it took longer than --decode-timeout %g s; it is predicted "
                            "instead", uris[index], self.timeout_s,
                        )  # fmt: skip
                        del busy[conn]
                        self._replace(child)
        finally:
            for child, _, _ in busy.values():  # only when interrupted
                child.kill()
                self.started -= 1
        return results

    def _replace(self, child: _Child) -> None:
        child.kill()
        self.idle.append(_Child(self.config).ready())

    def close(self) -> None:
        for child in self.idle:
            child.close()
        self.idle, self.started = [], 0


_CHILD = "import sys; from skutag.batchrun.plan.hashing import serve; serve(int(sys.argv[1]))"


def serve(fd: int) -> None:
    """The child's main: hash what the parent sends on the socket `fd` until it says stop or goes away."""
    conn = Connection(fd)
    with contextlib.suppress(EOFError, OSError):
        storage_options, max_bytes = conn.recv()
        conn.send("ready")
        while (job := conn.recv()) is not None:
            index, uri = job
            conn.send((index, sha256_one(uri, storage_options, max_bytes)))
