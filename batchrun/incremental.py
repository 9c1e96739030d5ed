"""`--since PREV_OUT` and `--retry-errors`: which rows of an earlier run can be copied instead of predicted.

A row of PREV_OUT is reused when its input has the same id, uri and version (S3 ETag, GCS
generation, local size:mtime_ns) and it is not an error of a retryable kind, provided the
model (sha256) and preprocessing are the same. Both plans are sorted by id, so the rows
of one unit of the new plan come from the few units of the old plan whose id ranges
overlap it: reading stays proportional to one unit, never to the catalog.
"""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from skutag import storage

from .commit.reader import committed_parts
from .options import RETRYABLE_KINDS
from .out import read_commit_logs
from .plan import Plan, read_plan

log = logging.getLogger(__name__)
_CACHED_PARTS = 4


@dataclass(frozen=True)
class Match:
    """Per row of a unit: reused from the previous run, or why it is predicted again."""

    reuse: np.ndarray  # bool
    new: int  # ids the previous run did not have
    changed: int  # same id, other uri or version
    retried: int  # unchanged, but an error of a retryable kind
    reused: int


class Previous:
    """The committed rows of an earlier OUT, looked up by unit of the new plan."""

    def __init__(self, out: str, storage_options: dict[str, Any] | None = None):
        self.out, self.storage_options = out, storage_options
        self.plan = read_plan(out, storage_options)
        self.parts = committed_parts(out, storage_options)  # the one reader: through the commit logs
        keys = [key for _name, key in read_commit_logs(out, storage_options)]
        self.key = keys[0] if keys else {}
        self._firsts = [unit.first_id for unit in self.plan.units]
        self._cache: OrderedDict[int, pa.Table] = OrderedDict()

    def unusable(self, key: dict[str, Any]) -> str | None:
        """Why this run cannot reuse the previous one's rows (None when it can)."""
        for name in ("model_sha256", "model", "topk", "embeddings"):
            if self.key.get(name) != key.get(name):
                return f"its {name.replace('_', ' ')} differs"
        return None

    def rows_for(self, ids: pa.Array) -> pa.Table | None:
        """The previous run's committed rows whose id is in `ids` (sorted), or None."""
        if len(ids) == 0:
            return None
        first, last = ids[0].as_py(), ids[len(ids) - 1].as_py()
        start = max(0, bisect.bisect_right(self._firsts, first) - 1)
        tables = []
        for unit in self.plan.units[start:]:
            if unit.first_id > last:
                break
            if unit.last_id < first:
                continue
            table = self._part(unit.number)
            if table is not None:
                tables.append(table.filter(pc.is_in(table.column("id"), value_set=ids)))
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="permissive")

    def _part(self, unit: int) -> pa.Table | None:
        if unit in self._cache:
            self._cache.move_to_end(unit)
            return self._cache[unit]
        part = self.parts.get(unit)
        table = None
        if part is not None:
            with storage.open_input(storage.join(self.out, part["file"]), self.storage_options) as handle:
                table = pq.read_table(handle)
            if "version" not in table.column_names:  # a 0.1.0 OUT: nothing to compare with
                table = None
        self._cache[unit] = table
        if len(self._cache) > _CACHED_PARTS:
            self._cache.popitem(last=False)
        return table


def match(unit_rows: pa.Table, previous: pa.Table | None, *, same_plan: bool = False) -> Match:
    """Which rows of a unit (id, uri, version) the previous rows can stand for.

    An input without a version (a URL whose listing said nothing) counts as changed, unless
    the previous run read this very plan (`--retry-errors`): then nothing can have changed.
    """
    rows = unit_rows.num_rows
    if previous is None or previous.num_rows == 0:
        return Match(np.zeros(rows, bool), rows, 0, 0, 0)
    before = {
        i: (u, v, s == "ok" or k not in RETRYABLE_KINDS)
        for i, u, v, s, k in zip(
            *(previous.column(c).to_pylist() for c in ("id", "uri", "version", "status", "error_kind")),
            strict=True,
        )
    }
    reuse = np.zeros(rows, bool)
    new = changed = retried = 0
    ids, uris, versions = (unit_rows.column(c).to_pylist() for c in ("id", "uri", "version"))
    for row, (input_id, uri, version) in enumerate(zip(ids, uris, versions, strict=True)):
        old = before.get(input_id)
        if old is None:
            new += 1
        elif old[0] != uri or old[1] != version or (version is None and not same_plan):
            changed += 1
        elif not old[2]:
            retried += 1
        else:
            reuse[row] = True
    return Match(reuse, new, changed, retried, int(reuse.sum()))


def removed_inputs(previous: Plan, current: Plan, storage_options: dict[str, Any] | None = None) -> int:
    """Ids the previous plan had and the current one has not (a streaming merge of two sorted lists)."""
    old, new = _ids(previous, storage_options), _ids(current, storage_options)
    removed = 0
    candidate = next(new, None)
    for input_id in old:
        while candidate is not None and candidate < input_id:
            candidate = next(new, None)
        if candidate != input_id:
            removed += 1
    return removed


def _ids(plan: Plan, storage_options: dict[str, Any] | None) -> Iterator[str]:
    for unit in plan.units:
        uri = storage.join(plan.out, "_plan", unit.file)
        with storage.open_input(uri, storage_options) as handle:
            yield from pq.read_table(handle, columns=["id"]).column("id").to_pylist()
