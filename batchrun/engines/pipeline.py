"""Consecutive batches through a chain of stages, one thread per stage, so the stages overlap.

The source (the supervised loader) is iterated on the caller's thread: it installs signal
handlers and contains dead workers there, which Python allows on the main thread only.
Each stage runs in its own thread behind a bounded queue (`depth` items), and takes its
items in order, so batches leave every stage in the order they came and each batch stays
one object with its rows aligned. While stage 2 runs batch n (ONNX Runtime releases the
GIL), stage 1 prepares batch n+1 (the GPU decoder) and the loader fetches batch n+2: the
slowest stage sets the pace. The first exception anywhere stops every stage and is raised
on the caller's thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

_END = object()


def run_pipeline(source: Iterable[Any], stages: list[Callable[[Any], Any]], *, depth: int = 2) -> list[float]:
    """Feed every item of `source` through `stages` (each the next one's input); returns each
    stage's busy seconds. The last stage's results are dropped: it does the writing."""
    if not stages:
        raise ValueError("a pipeline needs at least one stage")
    stop = threading.Event()
    errors: list[BaseException] = []
    queues: list[queue.Queue] = [queue.Queue(maxsize=depth) for _ in stages]
    seconds = [0.0] * len(stages)

    def put(target: queue.Queue, item: Any) -> bool:
        while not stop.is_set():
            try:
                target.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(source_queue: queue.Queue) -> Any:
        while not stop.is_set():
            try:
                return source_queue.get(timeout=0.1)
            except queue.Empty:
                continue
        return _END

    def work(number: int, stage: Callable[[Any], Any]) -> None:
        last = number == len(stages) - 1
        try:
            while (item := get(queues[number])) is not _END:
                started = time.perf_counter()
                result = stage(item)
                seconds[number] += time.perf_counter() - started
                if not last and not put(queues[number + 1], result):
                    return
            if not last:
                put(queues[number + 1], _END)
        except BaseException as exc:  # re-raised on the caller's thread
            errors.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=work, args=(n, stage), name=f"batchrun-stage-{n}", daemon=True)
        for n, stage in enumerate(stages)
    ]
    for thread in threads:
        thread.start()
    try:
        for item in source:
            if not put(queues[0], item):
                break  # a stage failed
        put(queues[0], _END)
    except BaseException:
        stop.set()
        raise
    finally:
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return seconds
