"""The prediction table: its schema, rows from a batch, and the writer thread that commits parts.

`PartWriter` takes (Batch, Predictions) from a bounded queue, turns them into Arrow
record batches, buffers a reader-friendly row group (~64 MB, at most 128k rows), and
writes `part-NNNNN.parquet` files (zstd) of `part_rows` rows each to a temporary name. A
part is committed by renaming it into place and then recording it, with the input ranges
it covers and its counts, in the manifest (also written atomically). A crash loses at most
the part in progress, which the next run redoes.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from skutag.fsio import atomic_path

from .infer import Predictions
from .loader import Batch
from .manifest import Manifest, OutputNames
from .ranges import covering, merge

ROW_GROUP_BYTES = 64 << 20
MAX_ROW_GROUP_ROWS = 128 * 1024
_BASE_ROW_BYTES = 400  # id, uri, sha256, top-k lists and the rest, uncompressed
_COMPACT_EVERY = 64  # batches buffered for a row group before they are joined into one chunk
_ABORT = object()  # queue item: drop the open part and stop


def prediction_schema(embedding_dim: int | None, metadata: dict[str, str]) -> pa.Schema:
    """DESIGN.md's columns; `embedding` only when the run writes embeddings."""
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_kind", pa.string()),
        pa.field("error", pa.string()),
        pa.field("label", pa.string()),
        pa.field("label_index", pa.int32()),
        pa.field("score", pa.float32()),
        pa.field("topk_labels", pa.list_(pa.string())),
        pa.field("topk_indices", pa.list_(pa.int32())),
        pa.field("topk_scores", pa.list_(pa.float32())),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("bytes", pa.int64()),
        pa.field("sha256", pa.string()),
    ]
    if embedding_dim is not None:
        fields.append(pa.field("embedding", pa.list_(pa.float32(), embedding_dim)))
    return pa.schema(fields, metadata=metadata)


def row_group_rows(embedding_dim: int | None, part_rows: int) -> int:
    """Rows per row group: about 64 MB uncompressed, at most 128k rows and one part."""
    row_bytes = _BASE_ROW_BYTES + 4 * (embedding_dim or 0)
    return max(1, min(part_rows, MAX_ROW_GROUP_ROWS, ROW_GROUP_BYTES // row_bytes))


def to_record_batch(
    batch: Batch,
    predictions: Predictions,
    ids: pa.Array,
    uris: pa.Array,
    classes: pa.Array,
    schema: pa.Schema,
) -> pa.RecordBatch:
    """One Arrow row per input of the batch; prediction columns are null on error rows."""
    rows = len(batch)
    failed = ~batch.ok
    take = pa.array(batch.indices)
    k = predictions.topk_indices.shape[1]
    offsets = pa.array(np.arange(0, (rows + 1) * k, k, dtype=np.int32))
    flat_indices = pa.array(predictions.topk_indices.reshape(-1))
    null_mask = pa.array(failed)

    def lists(values: pa.Array) -> pa.Array:
        return pa.ListArray.from_arrays(offsets, values, mask=null_mask)

    label_index = pa.array(predictions.topk_indices[:, 0], mask=failed)
    columns = {
        "id": ids.take(take).cast(pa.string()),
        "uri": uris.take(take).cast(pa.string()),
        "status": pa.array(np.where(batch.ok, "ok", "error").tolist(), pa.string()),
        "error_kind": pa.array(batch.error_kinds, pa.string()),
        "error": pa.array(batch.errors, pa.string()),
        "label": classes.take(label_index),
        "label_index": label_index,
        "score": pa.array(predictions.topk_scores[:, 0], mask=failed),
        "topk_labels": lists(classes.take(flat_indices)),
        "topk_indices": lists(flat_indices),
        "topk_scores": lists(pa.array(predictions.topk_scores.reshape(-1))),
        "width": pa.array(batch.widths, mask=batch.widths < 0),
        "height": pa.array(batch.heights, mask=batch.heights < 0),
        "bytes": pa.array(batch.nbytes, mask=batch.nbytes < 0),
        "sha256": pa.array(batch.sha256, pa.string()),
    }
    if "embedding" in schema.names:
        dim = schema.field("embedding").type.list_size
        values = pa.array(np.ascontiguousarray(predictions.embedding, np.float32).reshape(-1))
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(values, dim, mask=null_mask)
    return pa.RecordBatch.from_arrays([columns[name] for name in schema.names], schema=schema)


class PartWriter:
    """A thread that writes and commits parts; `put` blocks when `depth` batches are waiting."""

    def __init__(
        self,
        out: Path,
        names: OutputNames,
        manifest: Manifest,
        *,
        schema: pa.Schema,
        ids: pa.Array,
        uris: pa.Array,
        classes: list[str],
        part_rows: int,
        depth: int = 4,
    ):
        self.out, self.names, self.manifest, self.schema = out, names, manifest, schema
        self.ids, self.uris, self.classes = ids, uris, pa.array(classes, pa.string())
        self.part_rows = part_rows
        self.group_rows = row_group_rows(
            schema.field("embedding").type.list_size if "embedding" in schema.names else None, part_rows
        )
        self.seconds = 0.0
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="batchrun-writer", daemon=True)
        self._part: _OpenPart | None = None
        self._next_number = manifest.next_part_number()

    def start(self) -> PartWriter:
        self._thread.start()
        return self

    def put(self, batch: Batch, predictions: Predictions) -> None:
        self._send((batch, predictions))

    def close(self) -> None:
        """Commit the last part and stop; re-raises the writer's error, if any."""
        self._send(None)
        self._thread.join()
        self._raise_if_failed()

    def abort(self) -> None:
        """Stop without committing the open part (its temporary file is removed)."""
        self._send(_ABORT, check=False)
        self._thread.join(timeout=60)

    def _send(self, item: Any, check: bool = True) -> None:
        while self._thread.is_alive():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        if check:
            self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    self._commit()
                    return
                if item is _ABORT:
                    self._discard()
                    return
                started = time.perf_counter()
                batch, predictions = item
                records = to_record_batch(batch, predictions, self.ids, self.uris, self.classes, self.schema)
                self._write(records, batch.indices)
                self.seconds += time.perf_counter() - started
        except BaseException as exc:  # surfaced to the main thread by put/close
            self.error = exc
            self._discard()

    def _write(self, records: pa.RecordBatch, indices: np.ndarray) -> None:
        while records.num_rows:
            if self._part is None:
                self._part = _OpenPart(
                    self.out / self.names.part(self._next_number), self.schema, self.group_rows
                )
                self._next_number += 1
            room = self.part_rows - self._part.rows
            self._part.add(records.slice(0, room), indices[:room])
            records, indices = records.slice(room), indices[room:]
            if self._part.rows >= self.part_rows:
                self._commit()

    def _commit(self) -> None:
        started = time.perf_counter()
        if self._part is not None:
            entry = self._part.commit()
            self._part = None
            self.manifest.parts.append(entry)
            self.manifest.save(self.out, self.names)
        self.seconds += time.perf_counter() - started

    def _discard(self) -> None:
        if self._part is not None:
            self._part.discard()
            self._part = None


class _OpenPart:
    """One part being written to its temporary file, a row group at a time."""

    def __init__(self, final: Path, schema: pa.Schema, group_rows: int):
        self.final = final
        self.group_rows = group_rows
        self.rows = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._ranges: list[tuple[int, int]] = []
        self._counts: Counter = Counter()
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(final))
        self._writer = pq.ParquetWriter(self._tmp, schema, compression="zstd", write_statistics=True)

    def add(self, records: pa.RecordBatch, indices: np.ndarray) -> None:
        if not records.num_rows:
            return
        self._pending.append(records)
        self._pending_rows += records.num_rows
        self.rows += records.num_rows
        self._ranges = merge(self._ranges + covering(indices.tolist()))
        self._counts.update(_statuses(records))
        if self._pending_rows >= self.group_rows:
            self._flush()
        elif len(self._pending) >= _COMPACT_EVERY:
            # Many small batches cost ~10x their data in per-buffer overhead: keep one contiguous chunk.
            self._pending = pa.Table.from_batches(self._pending).combine_chunks().to_batches()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.Table.from_batches(self._pending), row_group_size=self.group_rows)
            self._pending, self._pending_rows = [], 0

    def commit(self) -> dict[str, Any]:
        self._flush()
        self._writer.close()
        self._stack.close()  # fsync + rename into place
        return {
            "file": self.final.name,
            "number": int(self.final.stem.rsplit("-", 1)[1]),
            "rows": self.rows,
            "ranges": [list(r) for r in self._ranges],
            "counts": dict(sorted(self._counts.items())),
        }

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(Exception):
            self._stack.__exit__(RuntimeError, RuntimeError("discarded"), None)  # removes the temporary


def _statuses(records: pa.RecordBatch) -> Counter:
    status = records.column("status").to_pylist()
    kinds = records.column("error_kind").to_pylist()
    return Counter("ok" if s == "ok" else f"error:{k}" for s, k in zip(status, kinds, strict=True))
