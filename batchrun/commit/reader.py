"""The one reader of committed rows, and the global `OUT/_SUCCESS`.

A part is a row source only when a commit log (`_commits[.TAG].json`, or 0.3's
`_manifest[.TAG].json`) lists it: a part file
that a crashed attempt left behind, or one a zombie wrote after its lease expired, is never
read. `--since`, `--retry-errors` (`batchrun.plan.incremental.Previous`) and `skutag index`
(`insight.index`) read OUT through `CommittedRows`, never through a glob of `part-*`.

`OUT/_SUCCESS` means every unit of the plan is committed. Each shard, after its own
`_SUCCESS[.TAG]`, checks whether the commit logs of OUT cover the plan and, if so, writes
it; so whichever shard finishes last publishes it, and an unsharded run publishes it as
always. `require_complete` is how `--since` refuses an incomplete earlier run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from skutag import storage
from skutag.errors import InputError

from ..arrow import read_parquet
from ..plan.catalog import Plan
from ..plan.reuse import RESUME_FIELDS
from .out import GLOBAL_SUCCESS, CommitEntry, read_commit_logs

if TYPE_CHECKING:
    import pyarrow.dataset as ds


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
    storage.write_bytes(storage.join(out, GLOBAL_SUCCESS), b"", storage_options)
    return True
