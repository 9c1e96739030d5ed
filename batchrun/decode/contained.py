"""The contained CPU decode: an input read and decoded in a child process with a time limit.

`ContainedDecoder` is the main decoder wherever no supervised DataLoader workers decode:
Ray's decode tasks (`decode_input(s)`: read and decode) and `--workers 0`
(`batchrun.decode.supervise`). The GPU decoder hands the bytes of a JPEG it cannot decode to
one too (`decode`). It decodes through `batchrun.decode.loader.decode_one` / `decode_bytes`
(the CPU path: same pixels, same error kinds) in one child process (the parent may hold
CUDA and an ONNX Runtime session: never fork it), so a decoder that hangs or dies costs
that input a `timeout` or `crashed` row, as in the decode workers, and a fresh process
takes the next one. Started on first use: a catalog the GPU decodes entirely never pays
for it. The child is a fresh interpreter started with `subprocess` that imports this
module only (no torch, no parent's `__main__`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from multiprocessing.connection import Connection

from .loader import (
    Preprocess,
    ReadOptions,
    Sample,
    _fix_mmap_threshold,
    decode_bytes,
    decode_one,
    error_sample,
)

STARTUP_TIMEOUT_S = 300.0  # a child on a loaded node can take long to import numpy, Pillow, pyarrow


class ContainedDecoder:
    """`decode(index, data)` -> the Sample the CPU path makes of those bytes, contained."""

    def __init__(self, preprocess: Preprocess, timeout_s: float, *, nice: int = 0):
        self.preprocess, self.timeout_s, self.nice = preprocess, timeout_s, nice
        self.restarts = 0
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None

    def decode(self, index: int, data: bytes) -> Sample:
        """The CPU path's Sample for bytes the GPU handed back."""
        return self._run(index, (index, bytes(data)), gpu_first=True)

    def decode_input(self, index: int, uri: str, size: int, read: ReadOptions) -> Sample:
        """`loader.decode_one` (read and decode) in the child: for callers with no supervised workers (Ray)."""
        return self._run(index, (index, uri, size, read), gpu_first=False)

    def decode_inputs(self, jobs: list[tuple[int, str, int]], read: ReadOptions) -> list[Sample]:
        """`decode_input` of (index, uri, size) jobs, in order, with one round trip for all of them.

        The child answers each input as soon as it is done, and each answer has its own
        `timeout_s`: an input that hangs or kills the child is that input's `timeout` or
        `crashed` row, and a fresh child takes the inputs after it.
        """
        samples: list[Sample] = []
        while len(samples) < len(jobs):
            pending = jobs[len(samples) :]
            conn = self._start()
            kind = None
            try:
                conn.send((pending, read))
                for _job in pending:
                    if not conn.poll(self.timeout_s):
                        kind = "timeout"
                        break
                    samples.append(conn.recv())
            except (EOFError, OSError):  # the child died on the input it was working on
                kind = "crashed"
            if kind is not None:
                index = jobs[len(samples)][0]  # answers come in order: the next one is the culprit
                samples.append(error_sample(index, kind, _message(kind, self.timeout_s, False)))
                self.close()
                self.restarts += 1
        return samples

    def _run(self, index: int, job: tuple, *, gpu_first: bool) -> Sample:
        conn = self._start()
        try:
            conn.send(job)
            if conn.poll(self.timeout_s):
                return conn.recv()
            kind = "timeout"  # no answer in time: close() kills the child
        except (EOFError, OSError):  # the child died: its end of the pipe closed (it may not be reaped yet)
            kind = "crashed"
        self.close()
        self.restarts += 1
        return error_sample(index, kind, _message(kind, self.timeout_s, gpu_first))

    def close(self) -> None:
        if self._process is not None:
            with contextlib.suppress(Exception):
                self._conn.send(None)
            try:
                self._process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None

    def _start(self) -> Connection:
        if self._conn is not None:
            return self._conn
        parent, child = socket.socketpair()
        # A fresh interpreter that imports only this module: a multiprocessing "spawn" child would
        # also import the parent's __main__ (in a Ray worker, all of Ray: seconds per start).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(child.fileno()), str(self.nice)],
            pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        child.close()
        conn = Connection(parent.detach())
        try:
            conn.send(self.preprocess)
            if not conn.poll(STARTUP_TIMEOUT_S):
                raise RuntimeError("the contained decoder did not start")
            conn.recv()  # ready
        except BaseException:
            process.kill()
            process.wait()
            conn.close()
            raise
        self._process, self._conn = process, conn
        return conn


_CHILD = "import sys; from skutag.batchrun.decode.contained import serve; serve(int(sys.argv[1]), int(sys.argv[2]))"


def serve(fd: int, nice: int = 0) -> None:
    """The child's main: decode what the parent sends on the socket `fd` until it closes."""
    if nice:
        os.nice(nice)
    _fix_mmap_threshold()  # long-lived decoder: large buffers go back to the OS (see loader.WorkerSetup)
    conn = Connection(fd)
    with contextlib.suppress(EOFError, OSError):  # the parent went away
        _serve(conn, conn.recv())


def _serve(conn: Connection, preprocess: Preprocess) -> None:
    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        if isinstance(job[0], list):  # decode_inputs: every answer goes back as soon as it is ready
            jobs, read = job
            for index, uri, size in jobs:
                conn.send(decode_one(index, uri, size, preprocess, read))
        elif len(job) == 2:
            index, data = job
            conn.send(decode_bytes(index, data, preprocess))
        else:
            index, uri, size, read = job
            conn.send(decode_one(index, uri, size, preprocess, read))


def _message(kind: str, timeout_s: float, gpu_first: bool = True) -> str:
    before = "the GPU could not decode it, and " if gpu_first else ""
    if kind == "timeout":
        return (
            f"{before}reading and decoding took longer than --decode-timeout {timeout_s:g} s; it was killed"
        )
    return f"{before}the decoder process died on it (killed by a signal or crashed); other inputs went on"
