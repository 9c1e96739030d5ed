"""Read and decode inputs in DataLoader workers: uint8 batches plus a status for every row.

A worker reads the file's bytes, hashes them, and decodes through `skutag.images.load_image`
with the card's preprocessing. A file that fails becomes a row with its error kind, never a
dropped sample, so every batch stays aligned with its input indices: `collate` stacks the
pixels of good rows into one uint8 `[rows, H, W, 3]` tensor (zeros for error rows, and
optionally padded to a fixed batch size for GPUs) and keeps the per-row facts beside it.

Workers are forked when the loader's iterator is created, which the caller does BEFORE it
creates the ONNX Runtime session (never fork after a session or CUDA exists).
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset

from skutag.images import ImageError, load_image, read_bytes

from .ranges import RangeIndex

# On the CPU, decoding is the background job: it should fill the cycles ORT's threads leave rather
# than preempt them. Measured on 2 cores (int8 ResNet-50, median of 3): nice 0 71.4, +5 71.7,
# +10 65.8, +19 61.9 images/s: +5 still leaves the decoder enough CPU; +10 starves it.
# Overridable for benchmarks (run_catalog(worker_nice=...)).
CPU_WORKER_NICE = 5


@dataclass(frozen=True)
class Preprocess:
    """What the card says about pixels: shorter side to `resize_size`, centre crop `image_size`."""

    image_size: int
    resize_size: int
    interpolation: str


@dataclass(frozen=True)
class Sample:
    index: int
    pixels: np.ndarray | None
    error_kind: str | None
    error: str | None
    width: int | None
    height: int | None
    nbytes: int | None
    sha256: str | None
    seconds: float  # CPU seconds of the worker spent on this input


@dataclass
class Batch:
    """Rows of one batch, in input order. `pixels` has at least `len(indices)` rows (padding after)."""

    indices: np.ndarray  # int64 input indices
    pixels: torch.Tensor | None  # uint8 [rows (+ padding), H, W, 3]; None once inferred
    ok: np.ndarray  # bool
    error_kinds: list[str | None]
    errors: list[str | None]
    widths: np.ndarray  # int32, -1 when unknown
    heights: np.ndarray
    nbytes: np.ndarray  # int64, -1 when unknown
    sha256: list[str | None]
    decode_seconds: float  # worker CPU seconds spent reading, hashing and decoding

    def __len__(self) -> int:
        return len(self.indices)

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pin-memory thread (CUDA): page-locked pixels for async copies."""
        self.pixels = self.pixels.pin_memory()
        return self


class CatalogDataset(Dataset):
    """Position p -> the decoded input `pending[p]` (an index into `uris`)."""

    def __init__(self, uris: pa.Array, pending: RangeIndex, preprocess: Preprocess):
        self.uris = uris
        self.pending = pending
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.pending)

    def __getitem__(self, position: int) -> Sample:
        index = self.pending[position]
        return decode_one(index, self.uris[index].as_py(), self.preprocess)


def decode_one(index: int, uri: str, preprocess: Preprocess) -> Sample:
    """Read, hash and decode one file; any ImageError becomes the sample's status."""
    started = time.process_time()
    nbytes = sha = None
    try:
        data = read_bytes(uri)
        nbytes, sha = len(data), hashlib.sha256(data).hexdigest()
        image = load_image(
            data,
            resize_size=preprocess.resize_size,
            image_size=preprocess.image_size,
            interpolation=preprocess.interpolation,
        )
    except ImageError as exc:
        return Sample(
            index, None, exc.kind, exc.message, None, None, nbytes, sha, time.process_time() - started
        )
    return Sample(
        index, image.pixels, None, None, image.width, image.height, nbytes, sha, time.process_time() - started
    )


class Collate:
    """Samples -> Batch, pixels padded to `pad_to` rows (a fixed shape for GPU providers)."""

    def __init__(self, image_size: int, pad_to: int = 0):
        self.image_size = image_size
        self.pad_to = pad_to

    def __call__(self, samples: list[Sample]) -> Batch:
        rows = len(samples)
        size = self.image_size
        pixels = torch.zeros((max(rows, self.pad_to), size, size, 3), dtype=torch.uint8)
        target = pixels.numpy()
        for row, sample in enumerate(samples):
            if sample.pixels is not None:
                target[row] = sample.pixels
        return Batch(
            indices=np.fromiter((s.index for s in samples), np.int64, rows),
            pixels=pixels,
            ok=np.fromiter((s.pixels is not None for s in samples), bool, rows),
            error_kinds=[s.error_kind for s in samples],
            errors=[s.error for s in samples],
            widths=_ints([s.width for s in samples], np.int32),
            heights=_ints([s.height for s in samples], np.int32),
            nbytes=_ints([s.nbytes for s in samples], np.int64),
            sha256=[s.sha256 for s in samples],
            decode_seconds=sum(s.seconds for s in samples),
        )


def _ints(values: list[int | None], dtype) -> np.ndarray:
    return np.array([-1 if v is None else v for v in values], dtype=dtype)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(device: str, cores: int | None = None) -> int:
    """Decode workers: on the CPU they compete with ORT's threads (a quarter of the cores, at least 1,
    measured best on 2 cores); with a GPU every core but the main process's can decode."""
    cores = cores or available_cores()
    if device == "cpu":
        return max(1, cores // 4)
    return max(1, cores - 1)


def default_prefetch(workers: int) -> int:
    """Batches each worker keeps ready: at least 4 in flight overall, so inference never waits on a hiccup."""
    return max(2, math.ceil(4 / max(workers, 1)))


def make_loader(
    dataset: CatalogDataset,
    *,
    batch_size: int,
    workers: int,
    prefetch: int | None = None,
    pad_batches: bool = False,
    pin_memory: bool = False,
    worker_nice: int = 0,
) -> DataLoader:
    """In-order batches; workers are forked when the iterator is created (before any ORT session)."""
    extra = {}
    if workers > 0:
        extra = {
            "prefetch_factor": prefetch or default_prefetch(workers),
            "persistent_workers": False,
            "multiprocessing_context": "fork" if "fork" in _start_methods() else None,
            "worker_init_fn": _WorkerSetup(worker_nice),
        }
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=Collate(dataset.preprocess.image_size, batch_size if pad_batches else 0),
        pin_memory=pin_memory,
        drop_last=False,
        **extra,
    )


class _WorkerSetup:
    """worker_init_fn: bounded memory, and (on the CPU) a lower priority than ORT's threads.

    glibc raises its mmap threshold each time a large block is freed, after which the decoder's
    multi-megabyte image buffers come from the heap and fragment it: a worker grew from 250 to
    840 MB over 10,000 catalog photos. A fixed 128 KiB threshold (glibc's default start) sends
    every large buffer back to the OS on free; the worker then stayed at ~225 MB.
    """

    def __init__(self, nice: int):
        self.nice = nice

    def __call__(self, worker_id: int) -> None:
        if self.nice:
            os.nice(self.nice)
        _fix_mmap_threshold()


def _fix_mmap_threshold(threshold: int = 128 * 1024) -> None:
    M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): nothing to fix
        return
    libc.mallopt(M_MMAP_THRESHOLD, threshold)


def _start_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()
