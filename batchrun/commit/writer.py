"""The prediction table: its schema, rows from decoded tasks, and the thread that commits units.

`UnitWriter` takes (Batch, Predictions) of decode tasks from a bounded queue and keeps
each unit's task results, by task id, until the unit is complete: a unit is committed only
when the task ids received cover it exactly. The first delivery of a task id is kept and
any later one dropped (logged and counted): a decode worker that finishes an overdue input
just before the watchdog kills it delivers that task twice, first in its batch (the real
result) and then as the supervisor's `timeout` row. Both engines go through this one check.
The writer then builds the unit's rows in plan order, each row looked up by its task id (a
task's result fans out to every id that names its image; `--since` rows are copied from the
earlier run), creates `part-NNNNN.parquet` (zstd) exclusively under its final name (`commit.parts`: a
stalled process's late part never replaces another's) and records it in the commit log. A crash loses at
most the units in progress, which the next run redoes under the same names.

Before anything is queued, `put` shows every result to the `commit.guard.SystemicGuard`,
which stops a run on a systemic fault (exit 4) or a store outage (exit 75), and each commit
checks the shard's lease (`commit.lease`): a process that lost it stops.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from skutag import storage

from ..arrow import numbers, strings
from ..decode.loader import Batch
from ..plan.catalog import Plan
from ..plan.work import UnitWork, WorkList
from ..predict import attributes
from ..predict.infer import Predictions
from ..predict.review import FIELDS as REVIEW_FIELDS
from ..predict.review import MANIFEST_LABEL, Review, card_review, with_manifest_labels
from .guard import SystemicGuard
from .human import HUMAN_LABEL, HumanLabels
from .out import CommitEntry, CommitLog, OutputNames, part_name
from .parts import write_part
from .reader import Previous

log = logging.getLogger(__name__)
_ABORT = object()  # queue item: stop without committing
PREDICTED_AT = pa.timestamp("us", tz="UTC")


def prediction_schema(
    embedding_dim: int | None, metadata: dict[str, str], labelled: bool = False, human: bool = False
) -> pa.Schema:
    """docs/design.md's columns; `embedding` only when the run writes embeddings; `manifest_label` when the
    plan has manifest labels; `ood_score`, `review` and `review_reason` (batchrun.predict.review) only when
    the card in `metadata` has a review section."""
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("version", pa.string()),
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
        pa.field("predicted_at", PREDICTED_AT),
    ]
    fields += attributes.fields(attributes.schema_heads(metadata))  # none for a model without heads
    if embedding_dim is not None:
        fields.append(pa.field("embedding", pa.list_(pa.float32(), embedding_dim)))
    if labelled:
        fields.append(MANIFEST_LABEL)
    if card_review(metadata) is not None:
        fields.extend(REVIEW_FIELDS)
    if human:  # a --since night whose earlier OUT has review decisions (commit.human)
        fields.append(HUMAN_LABEL)
    return pa.schema(fields, metadata=metadata)


def task_records(
    batch: Batch,
    predictions: Predictions,
    classes: pa.Array,
    schema: pa.Schema,
    predicted_at: datetime,
    review: Review | None = None,
) -> pa.RecordBatch:
    """One row per decode task of the batch (columns of `schema` but id/uri/version, plus `task`)."""
    rows = len(batch)
    failed = ~batch.ok
    k = predictions.topk_indices.shape[1]
    offsets = pa.array(np.arange(0, (rows + 1) * k, k, dtype=np.int32))
    flat_indices = pa.array(predictions.topk_indices[:rows].reshape(-1))
    null_mask = pa.array(failed)

    def lists(values: pa.Array) -> pa.Array:
        return pa.ListArray.from_arrays(offsets, values, mask=null_mask)

    label_index = pa.array(predictions.topk_indices[:rows, 0], mask=failed)
    columns = {
        "task": pa.array(batch.indices, pa.int64()),
        "status": pa.array(np.where(batch.ok, "ok", "error").tolist(), pa.string()),
        "error_kind": pa.array(batch.error_kinds, pa.string()),
        "error": pa.array(batch.errors, pa.string()),
        "label": classes.take(label_index),
        "label_index": label_index,
        "score": pa.array(predictions.topk_scores[:rows, 0], mask=failed),
        "topk_labels": lists(classes.take(flat_indices)),
        "topk_indices": lists(flat_indices),
        "topk_scores": lists(pa.array(predictions.topk_scores[:rows].reshape(-1))),
        "width": pa.array(batch.widths, mask=batch.widths < 0),
        "height": pa.array(batch.heights, mask=batch.heights < 0),
        "bytes": pa.array(batch.nbytes, mask=batch.nbytes < 0),
        "sha256": pa.array(batch.sha256, pa.string()),
        "predicted_at": pa.array([predicted_at] * rows, PREDICTED_AT),
    }
    if "embedding" in schema.names:
        dim = schema.field("embedding").type.list_size
        values = pa.array(np.ascontiguousarray(predictions.embedding[:rows], np.float32).reshape(-1))
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(values, dim, mask=null_mask)
    heads = attributes.schema_heads(schema.metadata)
    if heads:
        columns |= attributes.columns(heads, predictions.attributes or _no_heads(heads, rows), batch.ok)
    if "ood_score" in schema.names:
        review = review or card_review(schema.metadata)
        columns |= review.columns(batch.ok, predictions.topk_scores[:rows, 0], predictions.ood_score)
        if heads and predictions.attributes is not None:
            reasons = attributes.review_reasons(heads, predictions.attributes, batch.ok)
            columns |= attributes.with_review(columns, reasons)
    return pa.RecordBatch.from_pydict(columns)


def _no_heads(heads, rows: int) -> dict[str, np.ndarray]:
    """Probabilities of a batch with no good row (its attribute columns are null)."""
    return {h.name: np.zeros((rows, len(h.values)), np.float32) for h in heads}


def empty_predictions(rows: int, topk: int, embedding_dim: int | None) -> Predictions:
    """Predictions for a batch with no good row (every column is null in the output)."""
    embedding = np.zeros((rows, embedding_dim), np.float32) if embedding_dim else None
    return Predictions(np.zeros((rows, topk), np.int32), np.zeros((rows, topk), np.float32), embedding)


def unit_table(
    plan: Plan,
    work: UnitWork,
    results: pa.Table | None,
    previous: Previous | None,
    schema: pa.Schema,
    storage_options: dict[str, Any] | None,
    human: HumanLabels | None = None,
) -> pa.Table:
    """The unit's rows in plan order: predicted tasks fanned out, reused rows copied, manifest labels set,
    people's labels carried (`human_label`, when the schema has it)."""
    rows = plan.read_unit(work.unit, storage_options)
    full, schema = (
        schema,
        pa.schema([f for f in schema if f.name != HUMAN_LABEL.name], metadata=schema.metadata),
    )
    core = pa.schema([f for f in schema if f.name != MANIFEST_LABEL.name], metadata=schema.metadata)
    pieces, order = [], []
    predicted = np.flatnonzero(work.task_of_row >= 0)
    if len(predicted):
        position = pc.index_in(numbers(work.task_of_row[predicted]), value_set=results.column("task"))
        if position.null_count:
            raise RuntimeError(f"unit {work.number}: a row's task id has no result")  # never committed
        taken = results.take(position)
        base = rows.take(numbers(predicted)).select(["id", "uri", "version"])
        columns = {name: base.column(name) for name in base.column_names}
        columns.update({name: taken.column(name) for name in core.names if name not in columns})
        pieces.append(pa.table([columns[n] for n in core.names], schema=core))
        order.append(predicted)
    reused = np.flatnonzero(work.match.reuse)
    if len(reused):
        ids = rows.column("id").take(numbers(reused))
        old = previous.rows_for(ids.combine_chunks())
        old = old.take(pc.index_in(ids, value_set=old.column("id")))
        pieces.append(old.select(core.names).cast(core))
        order.append(reused)
    table = pa.concat_tables(pieces)
    table = table.take(numbers(np.argsort(np.concatenate(order), kind="stable")))
    table = with_manifest_labels(table, rows.column("label"), schema)
    if HUMAN_LABEL.name not in full.names:
        return table
    carried = human.column(table) if human is not None else pa.nulls(table.num_rows, pa.string())
    return table.append_column(HUMAN_LABEL, carried).cast(full)


class UnitWriter:
    """A thread that assembles and commits units by task id; `put` blocks when `depth` batches wait.

    Made before the engine starts (no thread yet); the engine calls `start` when it is safe to
    have a thread (the local engine forks its decode workers first).
    """

    def __init__(
        self,
        out: str,
        names: OutputNames,
        commit_log: CommitLog,
        plan: Plan,
        work: WorkList,
        *,
        schema: pa.Schema,
        classes: list[str],
        previous: Previous | None,
        storage_options: dict[str, Any] | None,
        human: HumanLabels | None = None,
        depth: int = 4,
        guard: SystemicGuard | None = None,
        lease: Any = None,  # commit.lease.Lease: checked before every commit
    ):
        self.out, self.names, self.commit_log, self.plan, self.work = out, names, commit_log, plan, work
        self.schema, self.classes = schema, strings(classes)
        self.previous, self.storage_options, self.human = previous, storage_options, human
        self.review = card_review(schema.metadata)  # parsed once: the class means can be large
        self.guard = guard if guard is not None else SystemicGuard(
            work.task_uris.to_pylist(), known_bad=work.known_bad, probes=work.probes,
            storage_options=storage_options,
        )  # fmt: skip
        self.lease = lease
        self.seconds = 0.0
        self.committed_rows = 0
        self.repeats = 0  # task deliveries dropped because the task id had been delivered before
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="batchrun-writer", daemon=True)
        self._results: dict[int, list[pa.RecordBatch]] = {}
        self._seen = np.zeros(work.tasks, bool)  # task ids delivered so far (first delivery wins)
        self._have = np.zeros(len(work.units), np.int64)  # distinct task ids received, per unit
        self._held: list[tuple] = []  # results waiting for the guard's verdict

    def start(self) -> UnitWriter:
        self._thread.start()
        return self

    def put(self, batch: Batch, predictions: Predictions) -> None:
        item = (batch, predictions, datetime.now(timezone.utc))
        undecided = not self.guard.decided
        if undecided:
            self._held.append(item)
        # raises on a systemic fault or an outage, also after the run was judged healthy
        self.guard.observe(batch.indices, batch.ok, batch.causes, batch.errors)
        if not undecided:
            self._send(item)
        elif self.guard.decided:
            self._flush_held()

    def close(self) -> None:
        """Commit what is complete and stop; re-raises the writer's error, if any."""
        self.guard.finish()  # a run smaller than the guard's sample
        self._flush_held()
        self._send(None)
        self._thread.join()
        if self.error is not None:
            raise self.error
        incomplete = [w.number for i, w in enumerate(self.work.units) if self._have[i] != w.tasks]
        if incomplete:
            raise RuntimeError(f"units left incomplete: {incomplete}")

    def abort(self) -> None:
        self._held = []
        self._send(_ABORT, check=False)
        self._thread.join(timeout=60)

    def _flush_held(self) -> None:
        held, self._held = self._held, []
        for item in held:
            self._send(item)

    def _send(self, item: Any, check: bool = True) -> None:
        while self._thread.is_alive():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        if check and self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            for index, unit in enumerate(self.work.units):
                if unit.tasks == 0:
                    self._commit(index)
            while True:
                item = self._queue.get()
                if item is None or item is _ABORT:
                    return
                started = time.perf_counter()
                self._add(*item)
                self.seconds += time.perf_counter() - started
        except BaseException as exc:  # surfaced to the main thread by put/close
            self.error = exc

    def _add(self, batch: Batch, predictions: Predictions, predicted_at: datetime) -> None:
        tasks = np.asarray(batch.indices, np.int64)
        if len(tasks) and (tasks.min() < 0 or tasks.max() >= self.work.tasks):
            raise RuntimeError(f"task ids outside this shard's work: {tasks.min()}..{tasks.max()}")
        fresh = np.zeros(len(tasks), bool)
        fresh[np.unique(tasks, return_index=True)[1]] = True  # a repeat inside the batch, too
        fresh &= ~self._seen[tasks]
        if not fresh.all():
            dropped = tasks[~fresh]
            self.repeats += len(dropped)
            log.warning("dropped %d repeated delivery(ies) of task(s) %s", len(dropped), dropped[:5].tolist())
        if not fresh.any():
            return
        self._seen[tasks[fresh]] = True
        records = task_records(batch, predictions, self.classes, self.schema, predicted_at, self.review)
        if not fresh.all():
            records = records.filter(pa.array(fresh))
        owners = self.work.task_unit[tasks[fresh]]
        for index in np.unique(owners):
            picked = records.filter(pa.array(owners == index))
            self._results.setdefault(int(index), []).append(picked)
            self._have[index] += picked.num_rows
            if self._have[index] == self.work.units[index].tasks:
                self._commit(int(index))

    def _commit(self, index: int) -> None:
        work = self.work.units[index]
        batches = self._results.pop(index, [])
        results = pa.Table.from_batches(batches) if batches else None
        received = np.sort(results.column("task").to_numpy()) if results is not None else np.zeros(0)
        if not np.array_equal(received, np.arange(work.first_task, work.first_task + work.tasks)):
            raise RuntimeError(f"unit {work.number}: the task ids received do not cover it exactly")
        if self.lease is not None:
            self.lease.check()  # a process that lost its shard's lease commits nothing more
        table = unit_table(
            self.plan, work, results, self.previous, self.schema, self.storage_options, self.human
        )
        name = part_name(work.number)
        write_part(table, storage.join(self.out, name), self.storage_options, self.lease)
        counts = Counter(
            "ok" if s == "ok" else f"error:{k}"
            for s, k in zip(
                table.column("status").to_pylist(), table.column("error_kind").to_pylist(), strict=True
            )
        )
        self.commit_log.commit(
            CommitEntry(
                unit=work.number,
                file=name,
                rows=table.num_rows,
                counts=dict(sorted(counts.items())),
                reused=work.match.reused,
                new=work.match.new,
                changed=work.match.changed,
                retried=work.match.retried,
                predicted=table.num_rows - work.match.reused,
                decoded=work.tasks,
            )
        )
        self.commit_log.save(self.out, self.names, self.storage_options)
        self.committed_rows += table.num_rows
