"""`--since PREV_OUT` and `--retry-errors`: which rows of an earlier run can be copied instead of predicted.

The earlier run's committed rows come from `commit.reader.Previous` (the one reader); `match`
decides, row by row of a unit, which of them stand for the new plan's rows.

A row of PREV_OUT is reused when its input is proven unchanged (`batchrun.plan.reuse`, the one
place that says what must match: same id, uri and version; without a version, the same
sha256 of its bytes, read but not decoded, in child processes: `hashing`) and it is not an error of a retryable kind,
provided the model (sha256) and preprocessing are the same. Both plans are sorted by id, so the rows
of one unit of the new plan come from the few units of the old plan whose id ranges
overlap it: reading stays proportional to one unit, never to the catalog.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from skutag import storage

from ..arrow import bools, numbers, read_parquet, strings
from ..options import RETRYABLE_KINDS
from .catalog import Plan
from .reuse import input_verdicts

log = logging.getLogger(__name__)
Hasher = Callable[[Sequence[str]], list[str | None]]
_RETRYABLE = strings(sorted(RETRYABLE_KINDS))
_OK = strings(["ok"])[0]  # a string scalar made without pa.scalar (see batchrun.arrow)


@dataclass(frozen=True)
class Match:
    """Per row of a unit: reused from the previous run, or why it is predicted again."""

    reuse: np.ndarray  # bool
    new: int  # ids the previous run did not have
    changed: int  # same id, other uri or version (or, without a version, other bytes)
    retried: int  # unchanged, but an error of a retryable kind
    reused: int
    known_bad: np.ndarray | None = None  # bool per row: an unchanged input whose earlier row failed
    known_good: np.ndarray | None = None  # bool per row: reused, and ok before (an object that reads)


def match(
    unit_rows: pa.Table,
    previous: pa.Table | None,
    *,
    snapshot: bool = False,
    hasher: Hasher | None = None,
    retry_kinds: frozenset[str] = RETRYABLE_KINDS,
) -> Match:
    """Which rows of a unit (id, uri, version) the previous rows can stand for (`reuse.input_verdicts`);
    error rows of `retry_kinds` are predicted again.

    Inputs without a version are hashed by `hasher` (uris -> sha256 hex or None) and reused only
    when the hash equals the previous row's; without a hasher they count as changed. Vectorised:
    a unit of 10,000 rows costs a few Arrow kernels, not 10,000 Python steps.
    """
    rows = unit_rows.num_rows
    if previous is None or previous.num_rows == 0:
        return Match(np.zeros(rows, bool), rows, 0, 0, 0)
    position = pc.index_in(unit_rows.column("id"), value_set=previous.column("id"))
    known = bools(position.is_valid())
    old = previous.select(["uri", "version", "status", "error_kind", "sha256"]).take(position)
    unchanged, needs_sha = input_verdicts(
        old.column("uri"), old.column("version"), unit_rows.column("uri"), unit_rows.column("version"),
        snapshot=snapshot,
    )  # fmt: skip
    ok = pc.equal(old.column("status"), _OK)
    kinds = _RETRYABLE if retry_kinds == RETRYABLE_KINDS else strings(sorted(retry_kinds))
    retryable = pc.and_(pc.invert(ok), pc.is_in(old.column("error_kind"), value_set=kinds))
    retry = bools(retryable)
    candidates = unchanged | needs_sha
    retried = known & candidates & retry
    reuse = known & unchanged & ~retry
    to_hash = np.flatnonzero(known & needs_sha & ~retry)
    changed = int((known & ~candidates).sum())
    if len(to_hash):
        uris = unit_rows.column("uri").take(numbers(to_hash)).to_pylist()
        old_sha = old.column("sha256").take(numbers(to_hash)).to_pylist()
        hashes = hasher(uris) if hasher else [None] * len(uris)
        for row, before, now in zip(to_hash, old_sha, hashes, strict=True):
            if now is not None and now == before:
                reuse[row] = True
            else:
                changed += 1
    return Match(
        reuse, int((~known).sum()), changed, int(retried.sum()), int(reuse.sum()),
        known_bad=retried, known_good=reuse & known & bools(ok),  # nulls count as not ok
    )  # fmt: skip


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
            yield from read_parquet(handle, columns=["id"]).column("id").to_pylist()
