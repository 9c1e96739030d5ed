"""What a shard still has to do, unit by unit: rows to copy, and the images to decode.

For every pending unit of the plan: which rows `--since` (or `--retry-errors`) copies from
an earlier run (inputs without a version are hashed first: `incremental.match`), and which
distinct images the other rows need. A manifest's identity is its
id, so two ids may name one image: that image is ONE decode task whose prediction fans out
to every row that names it (within the unit). Tasks are numbered across the shard in unit
order, the order in which engines decode them and the writer completes units. For the guard
(`commit.guard`) the work list also says which tasks retry a known-bad object (an unchanged
input whose earlier row failed) and names a few objects known to read (copied ok rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from ..arrow import numbers
from ..options import RETRYABLE_KINDS
from .catalog import Plan, Unit
from .hashing import DEFAULT_TIMEOUT_S, ContainedHasher
from .incremental import Match, match

PROBES = 4  # objects known to read (ok rows the earlier run read) kept for the guard's probe


class PreviousRows(Protocol):
    """An earlier run's committed rows, as `commit.reader.Previous` reads them."""

    def rows_for(self, ids: pa.Array) -> pa.Table | None: ...

    def is_snapshot_of(self, plan: Plan) -> bool: ...

    def retry_kinds(self, key: dict[str, Any]) -> frozenset[str]: ...


@dataclass
class UnitWork:
    unit: Unit
    match: Match
    task_of_row: np.ndarray  # int64 per row: its decode task (shard-wide number), -1 when reused
    first_task: int
    tasks: int

    @property
    def number(self) -> int:
        return self.unit.number


@dataclass
class WorkList:
    units: list[UnitWork]
    task_uris: pa.Array  # large_string, one per decode task
    task_sizes: np.ndarray  # int64, -1 when the listing did not say
    task_unit: np.ndarray  # int32: index into `units` of each task's unit
    known_bad: np.ndarray | None = None  # bool per task: retries an earlier error row of the same input
    probes: list[str] = field(default_factory=list)  # objects the earlier run read fine (copied ok rows)

    @property
    def tasks(self) -> int:
        return len(self.task_uris)

    @property
    def rows(self) -> int:
        return sum(u.unit.rows for u in self.units)


def prepare_work(
    plan: Plan,
    units: list[Unit],
    previous: PreviousRows | None,
    storage_options: dict[str, Any] | None = None,
    retry_kinds: frozenset[str] = RETRYABLE_KINDS,
    max_bytes: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> WorkList:
    """The WorkList of `units` (a shard's pending units), reusing `previous` rows where allowed; version-less
    inputs are hashed in child processes, each within `timeout_s` (`--decode-timeout`, `plan.hashing`)."""
    work: list[UnitWork] = []
    uris: list[pa.Array] = []
    sizes: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    bad: list[np.ndarray] = []
    probes: list[str] = []
    next_task = 0
    with ContainedHasher(storage_options, max_bytes, timeout_s) as hasher:  # started only if needed
        for position, unit in enumerate(units):
            rows = plan.read_unit(unit, storage_options)
            old = previous.rows_for(rows.column("id").combine_chunks()) if previous else None
            found = match(
                rows,
                old,
                snapshot=previous is not None and previous.is_snapshot_of(plan),
                hasher=hasher,
                retry_kinds=retry_kinds,
            )
            todo = np.flatnonzero(~found.reuse)
            task_of_row = np.full(rows.num_rows, -1, np.int64)
            if len(todo):
                todo_uris = rows.column("uri").take(pa.array(todo)).to_numpy(zero_copy_only=False)
                unique, first, inverse = np.unique(todo_uris, return_index=True, return_inverse=True)
                order = np.argsort(first, kind="stable")  # tasks in the order their first row appears
                rank = np.empty_like(order)
                rank[order] = np.arange(len(order))
                task_of_row[todo] = next_task + rank[inverse]
                picked = todo[first[order]]
                uris.append(
                    rows.column("uri").take(pa.array(picked)).combine_chunks().cast(pa.large_string())
                )
                size_column = rows.column("bytes").take(pa.array(picked)).to_numpy(zero_copy_only=False)
                sizes.append(np.array([-1 if s is None or s != s else int(s) for s in size_column], np.int64))
                owners.append(np.full(len(unique), position, np.int32))
                bad.append(
                    found.known_bad[picked] if found.known_bad is not None else np.zeros(len(picked), bool)
                )
            if found.known_good is not None and len(probes) < PROBES:
                good = np.flatnonzero(found.known_good)[: PROBES - len(probes)]
                probes += rows.column("uri").take(numbers(good)).to_pylist() if len(good) else []
            count = int(task_of_row.max() + 1 - next_task) if len(todo) else 0
            work.append(UnitWork(unit, found, task_of_row, next_task, count))
            next_task += count
    return WorkList(
        units=work,
        task_uris=pa.concat_arrays(uris) if uris else pa.nulls(0, pa.large_string()),  # pa.nulls: no pandas
        task_sizes=np.concatenate(sizes) if sizes else np.zeros(0, np.int64),
        task_unit=np.concatenate(owners) if owners else np.zeros(0, np.int32),
        known_bad=np.concatenate(bad) if bad else np.zeros(0, bool),
        probes=probes,
    )
