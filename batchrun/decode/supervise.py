"""A DataLoader that survives its workers: a decoder that dies or hangs costs one row, not the run.

Each worker records in shared memory which task it is decoding and since when. A watchdog
thread kills a worker whose task has run past `--decode-timeout`. When a worker dies (killed
by the watchdog, the OOM killer, or a segfault in a decoder), the DataLoader raises; the
supervisor then reads the dead worker's slot: that task becomes a `timeout` or `crashed` row,
every other undelivered task is decoded again by a fresh set of workers, in the same
invocation. Restarted workers are spawned, never forked: the parent now holds an ONNX
Runtime session (docs/design.md: never fork after a session exists).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator

from .loader import Batch, Collate, TaskDataset, WorkerSetup, default_prefetch, error_sample

log = logging.getLogger(__name__)

IDLE = -1
MAX_BLIND_RESTARTS = 3
DEATH_WAIT_S = 5.0  # a reset connection comes a moment before the dead worker can be reaped  # worker deaths that name no task (e.g. an idle worker OOM-killed)


class Slots:
    """Per worker, in shared memory: pid, the task being decoded (-1: none), and when it started."""

    def __init__(self, workers: int, context: multiprocessing.context.BaseContext):
        self.workers = workers
        self.pid = context.RawArray("q", workers)
        self.task = context.RawArray("q", [IDLE] * workers)
        self.started = context.RawArray("d", workers)

    def register(self, worker: int, pid: int) -> None:
        self.pid[worker] = pid
        self.task[worker] = IDLE

    def begin(self, worker: int, task: int) -> None:
        self.started[worker] = time.monotonic()
        self.task[worker] = task

    def end(self, worker: int) -> None:
        self.task[worker] = IDLE

    def reset(self) -> None:
        for worker in range(self.workers):
            self.pid[worker] = 0
            self.task[worker] = IDLE


class _Watchdog(threading.Thread):
    """Kills a worker whose current task has run longer than `timeout_s`; remembers which task."""

    def __init__(self, slots: Slots, timeout_s: float):
        super().__init__(name="batchrun-watchdog", daemon=True)
        self.slots, self.timeout_s = slots, timeout_s
        self.killed: dict[int, int] = {}  # worker -> task
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(min(0.2, self.timeout_s / 4)):
            now = time.monotonic()
            for worker in range(self.slots.workers):
                task, pid = self.slots.task[worker], self.slots.pid[worker]
                overdue = now - self.slots.started[worker] > self.timeout_s
                if task != IDLE and pid and worker not in self.killed and overdue and _alive(pid):
                    self.killed[worker] = task
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie has died already: it crashed, it did not time out)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


class SupervisedLoader:
    """Batches of `dataset` in the order of `batches`, with dead or hung workers contained."""

    def __init__(
        self,
        dataset: TaskDataset,
        batches: list[list[int]],
        *,
        workers: int,
        prefetch: int | None,
        pad_to: int,
        pin_memory: bool,
        nice: int,
        timeout_s: float,
    ):
        self.dataset, self.batches = dataset, batches
        self.workers, self.prefetch, self.pad_to = workers, prefetch, pad_to
        self.pin_memory, self.nice, self.timeout_s = pin_memory, nice, timeout_s
        self.collate = Collate(dataset.preprocess.image_size, pad_to)
        self.restarts = 0
        self.contained: list[tuple[int, str]] = []  # (task, kind) of every task that killed a worker
        first = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        self._context = multiprocessing.get_context(first)
        if workers:
            dataset.slots = Slots(workers, multiprocessing.get_context("spawn"))

    def start(self) -> Iterator[Batch]:
        """Fork the first workers now (before any session exists); iterate the result."""
        remaining = list(self.batches)
        iterator = self._iterate(remaining) if self.workers else self._in_process(remaining)
        return _Primed(iterator)

    def _in_process(self, remaining: list[list[int]]) -> Iterator[Batch]:
        """`--workers 0`: no worker pool, but never without a process boundary: each input is read and
        decoded in one spawned child with the time limit (`contained.ContainedDecoder`, as Ray's decode tasks),
        so a decoder that hangs or crashes still costs one row. Only GPU decoding (`read_only`: the
        child would send bytes back) reads in this process, and says so."""
        from .contained import ContainedDecoder

        yield None  # primed: nothing to fork
        data = self.dataset
        if data.read_only:
            log.warning("--workers 0 with GPU decoding: inputs are read in the main process, uncontained")
            for tasks in remaining:
                yield self.collate([data[t] for t in tasks])
            return
        child = ContainedDecoder(data.preprocess, self.timeout_s)
        try:
            for tasks in remaining:
                samples = [
                    child.decode_input(t, data.uris[t].as_py(), int(data.sizes[t]), data.read) for t in tasks
                ]
                self.restarts = child.restarts
                yield self.collate(samples)
        finally:
            child.close()

    def _iterate(self, remaining: list[list[int]]) -> Iterator[Batch]:
        from torch.utils.data import DataLoader  # the DataLoader path is the only one that needs torch

        blind = 0
        primed = False
        while remaining:
            slots = self.dataset.slots
            slots.reset()
            loader = DataLoader(
                self.dataset,
                batch_sampler=remaining,
                num_workers=self.workers,
                collate_fn=self.collate,
                pin_memory=self.pin_memory,
                prefetch_factor=self.prefetch or default_prefetch(self.workers),
                multiprocessing_context=self._context,
                worker_init_fn=WorkerSetup(self.nice, slots),
            )
            previous_handler = signal.getsignal(signal.SIGCHLD)
            iterator = iter(loader)  # starts the workers
            # torch's SIGCHLD handler raises in whatever the main thread is doing; the supervisor
            # wants the death reported where it waits for a batch, so it keeps the old handler.
            signal.signal(signal.SIGCHLD, previous_handler or signal.SIG_DFL)
            if not primed:
                primed = True
                yield None
            watchdog = _Watchdog(slots, self.timeout_s)
            watchdog.start()
            delivered = 0
            try:
                for batch in iterator:
                    delivered += 1
                    yield batch
                remaining = []
            except (RuntimeError, ConnectionError, EOFError) as exc:
                # A dead worker shows as torch's RuntimeError, or, when it died just after sending a
                # batch whose tensors travel as file descriptors, as a reset connection to its
                # resource sharer: that batch is lost with it and is decoded again.
                if isinstance(exc, RuntimeError) and "DataLoader worker" not in str(exc):
                    raise
                if not isinstance(
                    exc, RuntimeError
                ):  # the worker's sockets closed as it died: wait for its exit
                    _wait_for_a_death(iterator, DEATH_WAIT_S)
                culprits = self._culprits(iterator, slots, watchdog)
                if not isinstance(exc, RuntimeError) and not culprits and not _any_dead(iterator):
                    raise
                remaining = remaining[delivered:]
                if not culprits:
                    blind += 1
                    if blind > MAX_BLIND_RESTARTS:
                        raise
                    log.warning("a decode worker died holding no input (%s); restarting the workers", exc)
                else:
                    log.warning(
                        "contained a decode worker that %s",
                        ", ".join(f"{k} on task {t}" for t, k in culprits),
                    )
                    self.contained += culprits
                    remaining, lost = _without(remaining, {t for t, _k in culprits})
                    yield self.collate(
                        [error_sample(t, kind, _message(kind, self.timeout_s)) for t, kind in culprits]
                    )
                self.restarts += 1
                self._context = multiprocessing.get_context("spawn")
            finally:
                watchdog.stop()
                shutdown = getattr(iterator, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()

    def _culprits(self, iterator, slots: Slots, watchdog: _Watchdog) -> list[tuple[int, str]]:
        found = dict((task, "timeout") for task in watchdog.killed.values())
        for worker, process in enumerate(getattr(iterator, "_workers", [])):
            task = slots.task[worker]
            if task != IDLE and not process.is_alive() and task not in found:
                found[task] = "crashed"
        return sorted(found.items())


def _wait_for_a_death(iterator, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not _any_dead(iterator):
        time.sleep(0.02)


def _any_dead(iterator) -> bool:
    return any(not process.is_alive() for process in getattr(iterator, "_workers", []))


def _without(batches: list, tasks: set[int]) -> tuple[list, int]:
    kept = [
        [t for t in batch if t not in tasks] if any(t in tasks for t in batch) else batch for batch in batches
    ]
    return [b for b in kept if len(b)], sum(len(b) for b in batches) - sum(len(b) for b in kept)


def _message(kind: str, timeout_s: float) -> str:
    if kind == "timeout":
        return (
            f"reading and decoding took longer than --decode-timeout {timeout_s:g} s; the worker was killed"
        )
    return "the decoder process died on this input (killed by a signal or crashed); other inputs were redone"


class _Primed:
    """Starts the generator up to its first `yield None` (workers forked) at construction."""

    def __init__(self, generator: Iterator[Batch | None]):
        self._generator = generator
        next(self._generator)

    def __iter__(self) -> Iterator[Batch]:
        return self._generator

    def close(self) -> None:
        self._generator.close()


def batches_of(tasks: int, batch_size: int) -> list[range]:
    """Consecutive task numbers in batches of `batch_size`."""
    return [range(i, min(i + batch_size, tasks)) for i in range(0, tasks, batch_size)]
