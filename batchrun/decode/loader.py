"""Read and decode images in DataLoader workers: uint8 batches plus a status for every task.

A worker reads an input's bytes (local or object storage, size checked before the read,
transient errors retried), hashes them and decodes through `skutag.images.load_image` with
the card's preprocessing. Anything that goes wrong is the task's `error_kind`, never a
dropped sample, so every batch stays aligned with its task numbers: `Collate` stacks the
pixels of good rows into one uint8 `[rows, H, W, 3]` tensor (zeros for error rows, padded
to a fixed batch size for GPUs) and keeps the per-row facts beside it.

In `read_only` mode (the GPU decodes) a worker reads, sizes and hashes an input and checks
its header (`batchrun.decode.jpeg_probe`): a JPEG the GPU can take comes back as its bytes (all
of a batch's files back to back in one uint8 tensor, `EncodedRows`), with its EXIF
orientation; anything else is decoded right there, as above, so its row is the CPU path's.

Workers are forked when the first loader's iterator is created, which the caller does
BEFORE it creates the ONNX Runtime session. `batchrun.decode.supervise` restarts them (spawned,
never forked from a process that holds a session) when one dies or hangs.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from skutag import retries, storage
from skutag.images import ImageError, load_image, read_file
from skutag.listing import local_path

from .jpeg_probe import gpu_job

if TYPE_CHECKING:  # torch is imported where tensors are made (the DataLoader path), never at import:
    import torch  # `skutag plan`, a --since night with nothing to decode and Ray workers never need it

# On the CPU, decoding is the background job: it should fill the cycles ORT's threads leave rather
# than preempt them. Measured on 2 cores (int8 ResNet-50, median of 3): nice 0 71.4, +5 71.7,
# +10 65.8, +19 61.9 images/s: +5 still leaves the decoder enough CPU; +10 starves it.
CPU_WORKER_NICE = 5


@dataclass(frozen=True)
class Preprocess:
    """What the card says about pixels: shorter side to `resize_size`, centre crop `image_size`."""

    image_size: int
    resize_size: int
    interpolation: str


@dataclass(frozen=True)
class ReadOptions:
    max_bytes: int
    storage_options: dict[str, Any] = field(repr=False)  # values may be secrets: never in a repr


@dataclass(frozen=True)
class Sample:
    index: int  # task number
    pixels: np.ndarray | None
    error_kind: str | None
    error: str | None
    width: int | None
    height: int | None
    nbytes: int | None
    sha256: str | None
    seconds: float  # CPU seconds of the worker spent on this input
    encoded: bytes | None = None  # read_only mode: the file's bytes, for the GPU to decode
    orientation: int = 1  # EXIF orientation of `encoded` (1 = upright)
    cause: str | None = None  # a read that failed at the store: its cause (`skutag.retries.cause_of`)


@dataclass
class EncodedRows:
    """The JPEGs of a batch that the GPU decodes: their bytes back to back, one slice per row."""

    data: torch.Tensor  # uint8 [total bytes] (crosses from the worker in shared memory)
    offsets: np.ndarray  # int64 [rows + 1]: row i is data[offsets[i]:offsets[i + 1]]; empty: not for the GPU
    orientations: np.ndarray  # int8 [rows]: EXIF orientation, applied after decoding

    def rows(self) -> list[int]:
        """The rows that hold bytes to decode."""
        return np.flatnonzero(np.diff(self.offsets) > 0).tolist()

    def row(self, row: int) -> torch.Tensor:
        return self.data[int(self.offsets[row]) : int(self.offsets[row + 1])]


@dataclass
class Batch:
    """Rows of one batch, in task order. `pixels` has at least `len(indices)` rows (padding after)."""

    indices: np.ndarray  # int64 task numbers
    pixels: torch.Tensor | None  # uint8 [rows (+ padding), H, W, 3]; None once inferred
    ok: np.ndarray  # bool
    error_kinds: list[str | None]
    errors: list[str | None]
    widths: np.ndarray  # int32, -1 when unknown
    heights: np.ndarray
    nbytes: np.ndarray  # int64, -1 when unknown
    sha256: list[str | None]
    decode_seconds: float  # worker CPU seconds spent reading, hashing and decoding
    causes: list[str | None] | None = (
        None  # per row: a failed read's storage-level cause (the guard's evidence)
    )
    # read_only mode: rows still to decode on the GPU (`ok` already; `pixels` holds only the rows the
    # worker decoded, or is None when it decoded none). None once decoded, and in CPU decode mode.
    encoded: EncodedRows | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pin-memory thread (CUDA): page-locked pixels for async copies."""
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


class TaskDataset:
    """Task number -> its decoded image (or, `read_only`, the bytes of a JPEG the GPU decodes).

    A map-style dataset for torch's DataLoader (which needs only `__len__` and `__getitem__`).
    `slots` (optional) tells a watchdog what each worker holds.
    """

    def __init__(
        self,
        uris: pa.Array,
        sizes: np.ndarray,
        preprocess: Preprocess,
        read: ReadOptions,
        slots: Any = None,
        *,
        read_only: bool = False,
    ):
        self.uris, self.sizes, self.preprocess, self.read, self.slots = uris, sizes, preprocess, read, slots
        self.read_only = read_only

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, task: int) -> Sample:
        slots = self.slots
        worker = _worker_id() if slots is not None else None
        if worker is not None:
            slots.begin(worker, task)
        try:
            return decode_one(
                task,
                self.uris[task].as_py(),
                int(self.sizes[task]),
                self.preprocess,
                self.read,
                read_only=self.read_only,
            )
        finally:
            if worker is not None:
                slots.end(worker)


def _worker_id() -> int | None:
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return None if info is None else info.id


def read_input(uri: str, size: int, read: ReadOptions) -> bytes:
    """The bytes of one input; too-large inputs are refused from their size, before any read."""
    if size >= 0 and size > read.max_bytes:
        raise ImageError("too_large", f"{size:,} bytes exceeds --max-bytes {read.max_bytes:,} (not read)")
    if not storage.is_remote(uri):
        return read_file(local_path(uri), max_bytes=read.max_bytes)
    try:
        return storage.read_object(uri, read.storage_options, max_bytes=read.max_bytes)
    except storage.TooLarge as exc:
        raise ImageError(
            "too_large", f"{exc.size:,} bytes exceeds --max-bytes {read.max_bytes:,} (not read)"
        ) from exc
    except Exception as exc:  # after retries: missing object, denied, or a store that stayed down
        raise ImageError(
            "unreadable", f"cannot read {uri}: {type(exc).__name__}: {exc}", retries.cause_of(exc)
        ) from exc


def decode_one(
    index: int, uri: str, size: int, preprocess: Preprocess, read: ReadOptions, *, read_only: bool = False
) -> Sample:
    """Read, hash and decode one input; every failure becomes the sample's status.

    `read_only`: a JPEG the GPU can decode (`batchrun.decode.jpeg_probe.gpu_job`) is not decoded here;
    the sample carries its bytes (`encoded`) and orientation, and its upright width and height.
    """
    return _sample(index, lambda: read_input(uri, size, read), preprocess, read_only)


def decode_bytes(index: int, data: bytes, preprocess: Preprocess) -> Sample:
    """Decode bytes already read (a JPEG the GPU could not decode) exactly as `decode_one` would."""
    return _sample(index, lambda: data, preprocess, False)


def _sample(index: int, read: Callable[[], bytes], preprocess: Preprocess, read_only: bool) -> Sample:
    started = time.process_time()
    nbytes = sha = None
    try:
        data = read()
        nbytes, sha = len(data), hashlib.sha256(data).hexdigest()
        job = gpu_job(data) if read_only else None
        if job is not None:
            seconds = time.process_time() - started
            return Sample(
                index, None, None, None, job.width, job.height, nbytes, sha, seconds,
                encoded=data, orientation=job.orientation,
            )  # fmt: skip
        image = load_image(
            data,
            resize_size=preprocess.resize_size,
            image_size=preprocess.image_size,
            interpolation=preprocess.interpolation,
        )
    except ImageError as exc:
        return Sample(
            index, None, exc.kind, exc.message, None, None, nbytes, sha, time.process_time() - started,
            cause=exc.cause,
        )  # fmt: skip
    except MemoryError:
        if multiprocessing.parent_process() is None:
            raise  # the run itself is short of memory: no permanent row for this input
        return Sample(
            index, None, "too_large", "out of memory while decoding", None, None, nbytes, sha,
            time.process_time() - started,
        )  # fmt: skip
    except Exception as exc:  # a decoder bug is this input's error, never the run's
        message = f"{type(exc).__name__}: {exc}"
        return Sample(index, None, "corrupt", message, None, None, nbytes, sha, time.process_time() - started)
    return Sample(
        index, image.pixels, None, None, image.width, image.height, nbytes, sha, time.process_time() - started
    )


def error_sample(index: int, kind: str, message: str) -> Sample:
    return Sample(index, None, kind, message, None, None, None, None, 0.0)


class Collate:
    """Samples -> Batch, pixels padded to `pad_to` rows (a fixed shape for GPU providers).

    A batch with rows for the GPU (read_only workers) gets their bytes as `EncodedRows`, and
    pixels only for the rows its worker decoded (no padding: the GPU decoder pads).
    """

    def __init__(self, image_size: int, pad_to: int = 0):
        self.image_size = image_size
        self.pad_to = pad_to

    def __call__(self, samples: list[Sample]) -> Batch:
        rows = len(samples)
        size = self.image_size
        encoded = _encoded_rows(samples)
        decoded = any(s.pixels is not None for s in samples)
        pixels = None
        if encoded is None or decoded:
            padded = rows if encoded is not None else max(rows, self.pad_to)
            import torch

            pixels = torch.zeros((padded, size, size, 3), dtype=torch.uint8)
            target = pixels.numpy()
            for row, sample in enumerate(samples):
                if sample.pixels is not None:
                    target[row] = sample.pixels
        return batch_of(columns_of(samples), pixels=pixels, encoded=encoded)


def _encoded_rows(samples: list[Sample]) -> EncodedRows | None:
    lengths = [0 if s.encoded is None else len(s.encoded) for s in samples]
    if not any(lengths):
        return None
    offsets = np.zeros(len(samples) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    import torch

    data = torch.empty(int(offsets[-1]), dtype=torch.uint8)
    target = data.numpy()
    for row, sample in enumerate(samples):
        if sample.encoded is not None:
            target[offsets[row] : offsets[row + 1]] = np.frombuffer(sample.encoded, np.uint8)
    orientations = np.fromiter((s.orientation for s in samples), np.int8, len(samples))
    return EncodedRows(data, offsets, orientations)


# The facts of a row besides its pixels, as columns: what Collate puts in a Batch and what travels
# between Ray's stages (Ray Data infers each block's schema: no nulls, "" and -1 stand for none).
FACTS = ("task", "ok", "error_kind", "error", "width", "height", "nbytes", "sha256", "decode_s", "cause")


def columns_of(samples: list[Sample]) -> dict[str, np.ndarray]:
    """Samples -> their FACTS columns, one row each (the one place samples become columns)."""

    def ints(values, dtype) -> np.ndarray:
        return np.array([-1 if v is None else v for v in values], dtype)

    def texts(values) -> np.ndarray:
        return np.array(["" if v is None else v for v in values], dtype=object)

    return {
        "task": ints([s.index for s in samples], np.int64),
        "ok": np.array([s.pixels is not None or s.encoded is not None for s in samples], bool),
        "error_kind": texts([s.error_kind for s in samples]),
        "error": texts([s.error for s in samples]),
        "width": ints([s.width for s in samples], np.int32),
        "height": ints([s.height for s in samples], np.int32),
        "nbytes": ints([s.nbytes for s in samples], np.int64),
        "sha256": texts([s.sha256 for s in samples]),
        "decode_s": np.array([s.seconds for s in samples], np.float64),
        "cause": texts([s.cause for s in samples]),
    }


def batch_of(
    columns: dict[str, np.ndarray], pixels: torch.Tensor | None = None, encoded: EncodedRows | None = None
) -> Batch:
    """FACTS columns (`columns_of`, or a Ray block) -> a Batch, "" and -1 back to none."""

    def texts(values) -> list[str | None]:
        return [str(v) if v else None for v in values]

    return Batch(
        indices=np.asarray(columns["task"], np.int64),
        pixels=pixels,
        ok=np.asarray(columns["ok"], bool),
        error_kinds=texts(columns["error_kind"]),
        errors=texts(columns["error"]),
        widths=np.asarray(columns["width"], np.int32),
        heights=np.asarray(columns["height"], np.int32),
        nbytes=np.asarray(columns["nbytes"], np.int64),
        sha256=texts(columns["sha256"]),
        decode_seconds=float(np.sum(columns["decode_s"])),
        encoded=encoded,
        causes=texts(columns["cause"]) if "cause" in columns else None,
    )


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(device: str, cores: int | None = None) -> int:
    """Decode workers: on the CPU half the cores, at least 2 (they run at CPU_WORKER_NICE and fill
    the cycles ORT's threads leave); with a GPU every core but the main process's can decode.

    Measured on 2 cores, 690 real photos (benchmarks/RESULTS.md, issue 21): 2 workers against 1 took
    the in-run time of an int8 ResNet-50 from 8.2-8.6 s to 7.4-7.6 s and of fp32 from 17.6-17.7 to
    16.9-17.2 s; 3 workers were no faster than 2. One niced worker cannot keep up with ORT on photos
    whose decode costs about as much as the inference (1.3-1.6 MP progressive JPEG).
    """
    cores = cores or available_cores()
    if device == "cpu":
        return min(cores, max(2, cores // 2))
    return max(1, cores - 1)


def default_prefetch(workers: int) -> int:
    """Batches each worker keeps ready: at least 4 in flight overall, so inference never waits on a hiccup."""
    return max(2, math.ceil(4 / max(workers, 1)))


class WorkerSetup:
    """worker_init_fn: bounded memory, a lower priority than ORT's threads (CPU), and its slot's pid.

    glibc raises its mmap threshold each time a large block is freed, after which the decoder's
    multi-megabyte image buffers come from the heap and fragment it: a worker grew from 250 to
    840 MB over 10,000 catalog photos. A fixed 128 KiB threshold (glibc's default start) sends
    every large buffer back to the OS on free; the worker then stayed at ~225 MB.
    """

    def __init__(self, nice: int, slots: Any = None):
        self.nice = nice
        self.slots = slots

    def __call__(self, worker_id: int) -> None:
        if self.nice:
            os.nice(self.nice)
        if self.slots is not None:
            self.slots.register(worker_id, os.getpid())
        _fix_mmap_threshold()


def _fix_mmap_threshold(threshold: int = 128 * 1024) -> None:
    M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): nothing to fix
        return
    libc.mallopt(M_MMAP_THRESHOLD, threshold)
