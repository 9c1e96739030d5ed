"""Merge a finished night into a Delta Lake table keyed by `id` (delta-rs, the `delta` extra).

The table: the OUT's columns, `removed_at` (null while the id is in the plan; set by
`--keep-removed`) and `id_bucket` (crc32 of the id modulo `ID_BUCKETS`), the partition column. The
merge predicate names the bucket too, so delta-rs prunes the partitions a night does not touch, and a
merge rewrites only the files that hold a changed row (delta-rs is copy-on-write: each such file is
rewritten whole; see docs/operations.md for what that means for a night that changes 1%).

One commit per night (an empty one when nothing changed, so the night is recorded): new ids inserted, changed rows updated (a matched row whose scalar values are
all equal is left alone), ids that left the plan deleted, or kept with `removed_at` set. When the table
holds exactly the night this OUT ran `--since`, the merge is fed only the night's new and changed rows
and the removed ids (`night.changes_since`); otherwise the whole night, with every id missing from it
deleted (logged as a full merge).

Each commit carries two application transactions: `skutag.out.<token>` (the same OUT published again
is a no-op) and `skutag.publish` with the table's next publish number, so two publishers that read the
same version conflict: delta-rs refuses the second commit (CommitFailedError), which exits 75 and is
retried. The commit's metadata records the OUT, its token, the model's sha256 and skutag's version.
New OUT columns are added by schema evolution (`merge_schema`), never by rewriting the table.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from skutag import __version__
from skutag.errors import InputError, TransientError
from skutag.extras import require

from .night import Night, all_rows, changes_since

log = logging.getLogger(__name__)
ID_BUCKETS = 64
BUCKET = "id_bucket"
REMOVED_AT = "removed_at"
PUBLISH_APP = "skutag.publish"
HISTORY = 100  # commits read back for the latest night (others: optimize, vacuum by the table's owner)
PREDICATE = f"t.{BUCKET} = s.{BUCKET} AND t.id = s.id"
# delta-rs keeps a row group per open partition file in memory until it is full: small row groups bound
# a merge's memory (about 0.8 GB instead of 1.2 for a 1%-changed night of a 1,000,000-row table)
ROW_GROUP_ROWS = 4096
_TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Published:
    table: str
    version: int
    mode: str  # incremental | full | already published
    upserted: int = 0  # source rows that were new or changed
    removed: int = 0
    metrics: dict[str, Any] | None = None

    def describe(self) -> str:
        if self.mode == "already published":
            return f"{self.table}: this OUT is already published (version {self.version}); nothing to do"
        m = self.metrics or {}
        return (
            f"{self.table} version {self.version} ({self.mode} merge): {m.get('num_target_rows_inserted', 0)} "
            f"inserted, {m.get('num_target_rows_updated', 0)} updated, {m.get('num_target_rows_deleted', 0)} "
            f"deleted; {m.get('num_target_files_removed', 0)} files rewritten"
        )


def out_app(token: str) -> str:
    return f"skutag.out.{token}"


def id_buckets(ids: pa.Array | pa.ChunkedArray) -> pa.Array:
    """crc32(id, UTF-8) modulo ID_BUCKETS, per id: stable across processes and versions."""
    values = ids.to_pylist()
    return pa.array(np.fromiter((zlib.crc32(v.encode()) % ID_BUCKETS for v in values), np.int32, len(values)))


def table_rows(rows: pa.Table) -> pa.Table:
    """A night's rows as the table holds them: + `removed_at` (null) and `id_bucket`; fixed-size lists
    (`embedding`) as lists, which is what Delta stores."""
    fields = []
    for f in rows.schema:
        kind = pa.list_(f.type.value_type) if pa.types.is_fixed_size_list(f.type) else f.type
        fields.append(pa.field(f.name, kind))
    rows = rows.cast(pa.schema(fields))  # drops the Parquet file metadata, and `id`'s not-null
    rows = rows.append_column(REMOVED_AT, pa.nulls(rows.num_rows, _TIMESTAMP))
    return rows.append_column(BUCKET, id_buckets(rows.column("id")))


def removed_rows(ids: list[str], schema: pa.Schema) -> pa.Table:
    """Source rows that stand for removed ids: id and bucket set, `status` null (no OUT row has that)."""
    columns = [pa.array(ids, pa.string()) if f.name == "id" else pa.nulls(len(ids), f.type) for f in schema]
    table = pa.table(columns, schema=schema)
    return table.set_column(schema.get_field_index(BUCKET), BUCKET, id_buckets(table.column("id")))


def publish(
    night: Night,
    table: str,
    *,
    keep_removed: bool = False,
    table_options: dict[str, str] | None = None,
) -> Published:
    """Merge `night` into the Delta table at `table` in one commit (see the module docstring)."""
    deltalake = require("deltalake", "delta", "skutag publish")
    from deltalake import CommitProperties, DeltaTable, Transaction
    from deltalake.exceptions import CommitFailedError

    table = str(table).rstrip("/")
    exists = DeltaTable.is_deltatable(table, table_options)
    if exists:
        dt = DeltaTable(table, storage_options=table_options)
        if dt.transaction_version(out_app(night.token)) is not None:
            return Published(table, dt.version(), "already published")
        last = _last_night(dt)
        if last and str(last.get("skutag.finished_at", "")) > night.finished_at:
            raise InputError(
                f"{night.out} finished at {night.finished_at}, before the night {table} holds "
                f"({last.get('skutag.out')}, {last.get('skutag.finished_at')}): publish nights in order"
            )
        incremental = bool(night.since and last and last.get("skutag.out") == night.since)
    else:
        last, incremental = None, False
    if incremental:
        changed, removed = changes_since(night)
        pieces = [table_rows(t) for t in changed]
    else:
        why = "the table is new" if not exists else (
            "the OUT did not run --since" if not night.since else
            f"the table holds {last.get('skutag.out') if last else 'no skutag night'}, not --since {night.since}"
        )  # fmt: skip
        log.warning("full merge of %s into %s: %s", night.out, table, why)
        pieces, removed = [table_rows(t) for t in all_rows(night)], []
    if not pieces:
        pieces = [table_rows(next(all_rows(night)).slice(0, 0))]
    source = pa.concat_tables(pieces, promote_options="permissive")
    upserted = source.num_rows
    if removed:
        source = pa.concat_tables([source, removed_rows(removed, source.schema)])
    try:
        if not exists:
            DeltaTable.create(table, source.schema, partition_by=[BUCKET], storage_options=table_options)
            dt = DeltaTable(table, storage_options=table_options)
        publish_number = (dt.transaction_version(PUBLISH_APP) or 0) + 1
        properties = CommitProperties(
            custom_metadata={
                **night.metadata(),
                "skutag.version": __version__,
                "skutag.mode": "incremental" if incremental else "full",
                "skutag.id_buckets": str(ID_BUCKETS),
            },
            app_transactions=[Transaction(out_app(night.token), 1), Transaction(PUBLISH_APP, publish_number)],
        )
        removed_at = f"CAST('{night.finished_at}' AS TIMESTAMP)" if keep_removed else None
        metrics = merge(dt, source, properties, removed_at=removed_at, full=not incremental)
    except CommitFailedError as exc:
        raise TransientError(
            f"{table}: another publisher committed while this one merged ({str(exc).splitlines()[0]}); "
            "nothing of this night was committed, retry"
        ) from exc
    except deltalake.exceptions.DeltaError as exc:
        raise InputError(f"cannot publish to {table}: {str(exc).splitlines()[0]}") from exc
    version = DeltaTable(table, storage_options=table_options).version()
    return Published(
        table, version, "incremental" if incremental else "full", upserted, len(removed), metrics
    )


def merge(
    dt: Any, source: pa.Table, properties: Any, *, removed_at: str | None, full: bool
) -> dict[str, Any]:
    """Merge `source` (`table_rows`, then `removed_rows`) into the open DeltaTable `dt` in one commit with
    `properties`; returns delta-rs' merge metrics. `removed_at`: the SQL timestamp removed rows are marked
    with (None: deleted); `full`: ids missing from `source` are removed too."""
    from deltalake import WriterProperties

    writer = WriterProperties(max_row_group_size=ROW_GROUP_ROWS, compression="ZSTD")
    merger = dt.merge(
        source, PREDICATE, source_alias="s", target_alias="t", merge_schema=True,
        streamed_exec=False, writer_properties=writer, commit_properties=properties,
    )  # fmt: skip
    merger = _clauses(merger, source.schema, dt.schema().to_arrow(), removed_at, full=full)
    read_version = dt.version()
    metrics = merger.execute()
    if dt.version() == read_version:  # dt follows its own commits
        # delta-rs commits nothing for a merge that changes nothing: record the night all the same,
        # so the next night's --since finds it and publishing it again is a no-op
        dt.create_write_transaction(
            [], mode="append", schema=dt.schema(), partition_by=[BUCKET], commit_properties=properties
        )
    return metrics


def _clauses(merger: Any, source: pa.Schema, target: Any, keep_removed: str | None, *, full: bool) -> Any:
    """The merge's clauses: a source row with null `status` stands for a removed id; `keep_removed`: the
    timestamp literal removed rows are marked with (None: they are deleted)."""
    target_names = set(target.names) if hasattr(target, "names") else {f.name for f in target}
    compared = [
        f.name
        for f in source
        if f.name not in ("id", BUCKET) and f.name in target_names and not pa.types.is_nested(f.type)
    ]
    differs = "(" + " OR ".join(f"(t.`{name}` IS DISTINCT FROM s.`{name}`)" for name in compared) + ")"
    missing = [f.name for f in source if f.name not in target_names]
    if missing:  # a column the table lacks: every matched row gets it
        differs = "true"
    live = "s.status IS NOT NULL"
    merger = merger.when_matched_update_all(predicate=f"{live} AND {differs}")
    if keep_removed:
        merger = merger.when_matched_update(
            {REMOVED_AT: keep_removed}, predicate=f"s.status IS NULL AND t.{REMOVED_AT} IS NULL"
        )
    else:
        merger = merger.when_matched_delete(predicate="s.status IS NULL")
    merger = merger.when_not_matched_insert_all(predicate=live)
    if full:
        if keep_removed:
            merger = merger.when_not_matched_by_source_update(
                {REMOVED_AT: keep_removed}, predicate=f"t.{REMOVED_AT} IS NULL"
            )
        else:
            merger = merger.when_not_matched_by_source_delete()
    return merger


def _last_night(dt: Any) -> dict[str, Any] | None:
    """The commit metadata of the latest night published into `dt` among its last `HISTORY` commits (None
    when there is none: the next night is then merged in full)."""
    for commit in dt.history(HISTORY):
        if "skutag.token" in commit:
            return commit
    return None
