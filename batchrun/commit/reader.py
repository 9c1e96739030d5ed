"""The one reader of committed rows, and the global `OUT/_SUCCESS`.

A part is a row source only when a commit log (`_commits[.TAG].json`, or 0.3's
`_manifest[.TAG].json`) lists it: a part file
that a crashed attempt left behind, or one a zombie wrote after its lease expired, is never
read. `skutag index` (`insight.index`) reads OUT through `CommittedRows`; `--since` and
`--retry-errors` through `Previous` (an earlier run's committed rows, looked up by unit of the
new plan); never through a glob of `part-*`.

`OUT/_SUCCESS` means every unit of the plan is committed. Each shard, after its own
`_SUCCESS[.TAG]`, checks whether the commit logs of OUT cover the plan and, if so, writes
it; so whichever shard finishes last publishes it, and an unsharded run publishes it as
always. `require_complete` is how `--since` refuses an incomplete earlier run.
"""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from skutag import storage
from skutag.errors import InputError

from ..arrow import read_parquet
from ..options import RETRYABLE_KINDS
from ..plan.catalog import Plan, read_plan
from ..plan.reuse import RESUME_FIELDS, copy_problem, stale_kinds
from .out import GLOBAL_SUCCESS, PART, CommitEntry, read_commit_logs

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import pyarrow.dataset as ds

_CACHED_PARTS = 4  # parts of the earlier run `Previous` keeps read


def committed_parts(
    out: str, storage_options: dict[str, Any] | None = None, key: dict[str, Any] | None = None
) -> dict[int, CommitEntry]:
    """unit -> commit-log entry of every committed part in OUT (only logs of the run `key`, when given:
    the same plan, model and options that shape the rows)."""
    parts: dict[int, CommitEntry] = {}
    for _name, commit_log in read_commit_logs(out, storage_options):
        if key is not None and any(commit_log.key.get(f) != key.get(f) for f in RESUME_FIELDS):
            continue
        for entry in commit_log.parts:
            parts[entry.unit] = entry
    return parts


class CommittedRows:
    """The committed rows of one OUT, part by part, as its commit logs list them."""

    def __init__(self, out: str, storage_options: dict[str, Any] | None = None):
        self.out, self.storage_options = str(out), storage_options
        self.parts = committed_parts(self.out, storage_options)

    @property
    def complete(self) -> bool:
        return is_complete(self.out, self.storage_options)

    def uris(self) -> list[str]:
        return [storage.join(self.out, self.parts[unit].file) for unit in sorted(self.parts)]

    def read_unit(self, unit: int, columns: list[str] | None = None) -> pa.Table | None:
        part = self.parts.get(unit)
        if part is None:
            return None
        with storage.open_input(storage.join(self.out, part.file), self.storage_options) as handle:
            return read_parquet(handle, columns=columns)

    def dataset(self) -> ds.Dataset:
        """The committed parts as one pyarrow dataset (local paths, or the object store through fsspec)."""
        import pyarrow.dataset as ds  # imports pandas: only for the readers of a whole OUT

        uris = self.uris()
        if not uris:
            raise InputError(f"{self.out} has no committed parts (is it a `skutag run` OUT?)")
        if not storage.is_remote(self.out):
            return ds.dataset(uris, format="parquet")
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        fs = storage.filesystem(self.out, self.storage_options)
        paths = [uri.split("://", 1)[1] for uri in uris]
        return ds.dataset(paths, format="parquet", filesystem=PyFileSystem(FSSpecHandler(fs)))


def is_complete(out: str, storage_options: dict[str, Any] | None = None) -> bool:
    return storage.exists(storage.join(str(out), GLOBAL_SUCCESS), storage_options)


def require_complete(out: str, flag: str, storage_options: dict[str, Any] | None = None) -> None:
    """Refuse (exit 2) an earlier OUT that lacks `_SUCCESS`, naming how to accept it anyway."""
    if not is_complete(out, storage_options):
        raise InputError(
            f"{flag} {out}: that run is incomplete (no _SUCCESS: a shard is still running, failed or was "
            f"never started); finish it first, or pass --since-incomplete to reuse its committed rows"
        )


def publish_if_complete(
    out: str, plan: Plan, key: dict[str, Any], storage_options: dict[str, Any] | None
) -> bool:
    """Write `OUT/_SUCCESS` when the commit logs of run `key` cover every unit of `plan`; True if written."""
    if is_complete(out, storage_options):
        return True
    parts = committed_parts(out, storage_options, key)
    if any(unit.number not in parts for unit in plan.units):
        return False
    remove_foreign_parts(out, plan, storage_options)
    storage.write_bytes(storage.join(out, GLOBAL_SUCCESS), b"", storage_options)
    return True


def remove_foreign_parts(out: str, plan: Plan, storage_options: dict[str, Any] | None) -> None:
    """Remove part files whose unit number is outside `plan` (left by an older, larger plan when an
    --overwrite was cut short): no shard of this plan writes them, and none may sit beside `_SUCCESS`."""
    for name in storage.list_names(out, storage_options):
        found = PART.fullmatch(name)
        if found and int(found.group(1)) >= len(plan.units):
            log.warning("removing %s: a part of an older plan", name)
            storage.remove(storage.join(out, name), storage_options)


class Previous:
    """The committed rows of an earlier OUT, looked up by unit of the new plan."""

    def __init__(self, out: str, storage_options: dict[str, Any] | None = None):
        self.out, self.storage_options = out, storage_options
        self.plan = read_plan(out, storage_options)
        self.parts = committed_parts(out, storage_options)  # the one reader: through the commit logs
        self.keys = [commit_log.key for _name, commit_log in read_commit_logs(out, storage_options)]
        self.key = self.keys[0] if self.keys else {}
        self._firsts = [unit.first_id for unit in self.plan.units]
        self._cache: OrderedDict[int, pa.Table] = OrderedDict()

    def unusable(self, key: dict[str, Any]) -> str | None:
        """Why this run cannot reuse the previous one's rows (None when it can): every shard's log counts."""
        for earlier in self.keys or [{}]:
            problem = copy_problem(earlier, key)
            if problem:
                return problem
        return None

    def retry_kinds(self, key: dict[str, Any]) -> frozenset[str]:
        """Error kinds read again rather than copied into a run with `key`: the retryable ones, and those
        a setting decided that differs tonight (`plan.reuse.stale_kinds`)."""
        stale = frozenset().union(*(stale_kinds(earlier, key) for earlier in self.keys or [{}]))
        return RETRYABLE_KINDS | stale

    def is_snapshot_of(self, plan: Plan) -> bool:
        """True when these rows are `plan`'s own OUT (`--retry-errors`): the same listing, not a new night."""
        return storage.join(self.out, "") == storage.join(plan.out, "") and self.plan.plan_id == plan.plan_id

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
            with storage.open_input(storage.join(self.out, part.file), self.storage_options) as handle:
                table = read_parquet(handle)
            if "version" not in table.column_names:  # a 0.1.0 OUT: nothing to compare with
                table = None
        self._cache[unit] = table
        if len(self._cache) > _CACHED_PARTS:
            self._cache.popitem(last=False)
        return table
