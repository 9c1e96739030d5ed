"""What one finished OUT brings to the table: its identity (token, model, skutag version) and its changes.

A night is published only when `OUT/_SUCCESS` exists (exit 2 otherwise). Its token is the sha256 of
the plan (its id and when it was made) and every shard's run key: the same OUT, wherever it is copied,
has the same token, so publishing it again is recognised; another night over the same catalog has
another plan time, so another token. Rows are read only through the commit logs (`commit.reader`), unit by unit.

`changes_since` gives the rows the table must change when the table holds the night this OUT ran
`--since`: a row `--since` copied keeps the earlier row's values (its `predicted_at` included), so a
row is unchanged when the earlier OUT has the same id with the same scalar values (a re-predicted
row has a new `predicted_at`; a reused row whose manifest label changed differs in `manifest_label`);
ids the earlier plan had and this one has not are removed. `all_rows` is the full night, for a
table that holds anything else.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from skutag import storage
from skutag.errors import InputError

from ..commit.out import GLOBAL_SUCCESS, read_commit_logs, read_json
from ..commit.reader import CommittedRows, Previous, is_complete
from ..plan.catalog import Plan, read_plan


@dataclass(frozen=True)
class Night:
    """A finished OUT, as the table's commit metadata records it."""

    out: str
    token: str  # sha256 over the plan (id, made at) and the shards' run keys
    model_sha256: str
    since: str | None  # the OUT every shard ran --since, when they all name the same one
    finished_at: str  # the latest shard's finish (ISO 8601, UTC)
    storage_options: dict[str, Any] | None = None

    def metadata(self) -> dict[str, str]:
        return {
            "skutag.out": self.out,
            "skutag.token": self.token,
            "skutag.model_sha256": self.model_sha256,
            "skutag.finished_at": self.finished_at,
        }


def read_night(out: str, storage_options: dict[str, Any] | None = None) -> Night:
    """The finished OUT `out`; refuses (exit 2) one without `_SUCCESS`."""
    out = _absolute(out)
    if not is_complete(out, storage_options):
        raise InputError(
            f"{out} is not finished (no {GLOBAL_SUCCESS}): only a complete run is published; "
            "finish every shard first"
        )
    plan = read_plan(out, storage_options)
    keys = [commit_log.key for _name, commit_log in read_commit_logs(out, storage_options)]
    summaries = [
        read_json(storage.join(out, name), storage_options)
        for name in storage.list_names(out, storage_options)
        if name.startswith("_summary") and name.endswith(".json")
    ]
    if not keys or not summaries:
        raise InputError(f"{out} has no commit log or summary: is it a `skutag run` OUT?")
    token = hashlib.sha256(
        json.dumps(
            [plan.plan_id, plan.created_at, sorted(json.dumps(k, sort_keys=True) for k in keys)]
        ).encode()
    ).hexdigest()
    sinces = {(s.get("options") or {}).get("since") for s in summaries}
    since = sinces.pop() if len(sinces) == 1 else None
    models = {s.get("model_sha256") for s in summaries}
    return Night(
        out=out,
        token=token,
        model_sha256=",".join(sorted(m for m in models if m)),
        since=_absolute(since) if since else None,
        finished_at=max(str(s.get("finished_at") or "") for s in summaries),
        storage_options=storage_options,
    )


def _absolute(uri: str) -> str:
    """An OUT as the table's metadata names it: object URLs as given, local paths absolute (a relative
    `--since` is resolved against this process's directory; a mismatch only costs a full merge)."""
    uri = str(uri).rstrip("/")
    return uri if storage.is_remote(uri) else os.path.abspath(uri)


def all_rows(night: Night) -> Iterator[pa.Table]:
    """Every committed row of the night, unit by unit."""
    rows = CommittedRows(night.out, night.storage_options)
    for unit in sorted(rows.parts):
        table = rows.read_unit(unit)
        if table is not None and table.num_rows:
            yield table


def changes_since(night: Night) -> tuple[Iterator[pa.Table], list[str]]:
    """(the rows that are new or differ from the --since OUT's, unit by unit; the ids that left the plan)."""
    if night.since is None:
        raise ValueError("the night did not run --since")
    previous = Previous(night.since, night.storage_options)
    removed = removed_ids(previous.plan, read_plan(night.out, night.storage_options), night.storage_options)

    def changed() -> Iterator[pa.Table]:
        for table in all_rows(night):
            old = previous.rows_for(table.column("id").combine_chunks())
            keep = _differs(table, old)
            if keep is not None:
                table = table.filter(keep)
            if table.num_rows:
                yield table

    return changed(), removed


def _differs(table: pa.Table, old: pa.Table | None) -> pa.Array | None:
    """Per row of `table`: True when `old` has no row of its id or one with other scalar values; None: all."""
    if old is None or old.num_rows == 0:
        return None
    position = pc.index_in(table.column("id"), value_set=old.column("id"))
    differs = pc.is_null(position)
    aligned = old.take(position)
    for name in table.column_names:
        kind = table.schema.field(name).type
        if name == "id" or pa.types.is_nested(kind) or name not in aligned.column_names:
            continue
        a, b = table.column(name), aligned.column(name)
        if b.type != kind:
            b = b.cast(kind)
        same = pc.or_(
            pc.fill_null(pc.equal(a, b), False), pc.and_(pc.is_null(a), pc.is_null(b))
        )  # null-safe equality
        differs = pc.or_(differs, pc.invert(same))
    return differs


def removed_ids(previous: Plan, current: Plan, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Ids the previous plan had and the current one has not (a streaming merge of two sorted lists)."""
    old, new = _ids(previous, storage_options), _ids(current, storage_options)
    removed = []
    candidate = next(new, None)
    for input_id in old:
        while candidate is not None and candidate < input_id:
            candidate = next(new, None)
        if candidate != input_id:
            removed.append(input_id)
    return removed


def _ids(plan: Plan, storage_options: dict[str, Any] | None) -> Iterator[str]:
    for unit in plan.units:
        yield from plan.read_unit(unit, storage_options).column("id").to_pylist()
