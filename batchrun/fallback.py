"""The CPU decode of JPEGs the GPU could not decode, in a child process with a time limit.

The GPU decoder hands such an input's bytes back; `CpuFallback` decodes them through
`batchrun.loader.decode_bytes` (the CPU path: same pixels, same error kinds) in one
spawned process (the parent holds CUDA and an ONNX Runtime session: never fork it), so a
decoder that hangs or dies costs that input a `timeout` or `crashed` row, as in the
decode workers, and a fresh process takes the next one. Started on first use: a catalog
the GPU decodes entirely never pays for it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from multiprocessing.connection import Connection

from .loader import Preprocess, Sample, decode_bytes, error_sample

STARTUP_TIMEOUT_S = 300.0  # a spawned child imports torch before it answers


class CpuFallback:
    """`decode(index, data)` -> the Sample the CPU path makes of those bytes, contained."""

    def __init__(self, preprocess: Preprocess, timeout_s: float):
        self.preprocess, self.timeout_s = preprocess, timeout_s
        self.restarts = 0
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def decode(self, index: int, data: bytes) -> Sample:
        conn = self._start()
        try:
            conn.send((index, bytes(data)))
            if conn.poll(self.timeout_s):
                return conn.recv()
        except (EOFError, OSError):  # the child died: its end of the pipe closed
            pass
        kind = "timeout" if self._process is not None and self._process.is_alive() else "crashed"
        self.close()
        self.restarts += 1
        return error_sample(index, kind, _message(kind, self.timeout_s))

    def close(self) -> None:
        if self._process is not None:
            with contextlib.suppress(Exception):
                self._conn.send(None)
            self._process.join(timeout=1)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None

    def _start(self) -> Connection:
        if self._conn is not None:
            return self._conn
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=_serve, args=(child, self.preprocess), daemon=True)
        process.start()
        child.close()
        if not parent.poll(STARTUP_TIMEOUT_S):
            process.kill()
            raise RuntimeError("the CPU fallback decoder did not start")
        parent.recv()  # ready
        self._process, self._conn = process, parent
        return parent


def _serve(conn: Connection, preprocess: Preprocess) -> None:
    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        index, data = job
        conn.send(decode_bytes(index, data, preprocess))


def _message(kind: str, timeout_s: float) -> str:
    if kind == "timeout":
        return (
            f"the GPU could not decode it, and the CPU decoder took longer than --decode-timeout "
            f"{timeout_s:g} s; it was killed"
        )
    return (
        "the GPU could not decode it, and the CPU decoder process died on it (killed by a signal or crashed)"
    )
