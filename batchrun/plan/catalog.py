"""The plan: a run's input list, fixed once in `OUT/_plan/` and read by every shard, rerun and engine.

`make_plan` lists the sources once (streaming), sorts by id with an external merge sort
(sorted runs of `SORT_CHUNK` rows spilled to temporary Parquet files, then merged), drops
exact repeats (same id and uri), refuses one id naming two files, and writes units of
`part_rows` rows as `plan-<token>-NNNNN.parquet` (id, uri, bytes, version, label). The plan
exists once `_plan/_PLAN` is created with an exclusive create (a hard link locally, a
conditional PUT on S3): of two shards that plan at the same moment one wins, the other
deletes its own unit files and uses the winner's plan. `_PLAN` names this process's random
token (in its unit files' names), so a conditional PUT whose reply was lost recognises its own
`_PLAN` when read back and never deletes the files it names. A listing that fails publishes
nothing: the error propagates (`ListingError`, exit 75) and any unit file already uploaded is
removed. Memory stays flat in the inputs.

Unit k of the plan becomes part k of the output (`part-NNNNN.parquet`, the same name on
every attempt, in every engine); a shard is a contiguous slice of units.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from skutag import storage
from skutag.errors import InputError
from skutag.listing import Entry, ListingCounts, list_sources

from ..arrow import array, int64s, read_parquet, strings
from ..options import DEFAULT_PART_ROWS

log = logging.getLogger(__name__)

PLAN_DIR = "_plan"
PLAN_FILE = "_PLAN"
FORMAT = 1
SORT_CHUNK = 100_000  # rows sorted in memory before a run is spilled to disk
MERGE_ROWS = 32_768  # rows held in memory across all runs while they are merged
PLAN_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("bytes", pa.int64()),
        pa.field("version", pa.string()),
        pa.field("label", pa.string()),  # a manifest's label column; null elsewhere
    ]
)
Row = tuple[str, str, int | None, str | None, str | None]  # PLAN_SCHEMA's columns, in order


@dataclass(frozen=True)
class Unit:
    number: int
    file: str
    rows: int
    start: int  # index of its first row in the whole plan
    first_id: str
    last_id: str


@dataclass
class Plan:
    out: str
    plan_id: str
    sources: list[str]
    part_rows: int
    total: int
    duplicates: int
    listing: dict[str, int]
    units: list[Unit] = field(default_factory=list)
    created_at: str = ""
    labelled: int = 0  # rows with a manifest label: the run then writes `manifest_label`

    def shard_units(self, index: int, count: int) -> list[Unit]:
        """Shard I of N: a contiguous slice of the units."""
        n = len(self.units)
        return self.units[n * index // count : n * (index + 1) // count]

    def read_unit(self, unit: Unit, storage_options: dict[str, Any] | None = None) -> pa.Table:
        uri = storage.join(self.out, PLAN_DIR, unit.file)
        with storage.open_input(uri, storage_options) as handle:
            return read_parquet(handle, schema=PLAN_SCHEMA)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("out")
        return {"format": FORMAT, **data}


def plan_exists(out: str, storage_options: dict[str, Any] | None = None) -> bool:
    return storage.exists(storage.join(out, PLAN_DIR, PLAN_FILE), storage_options)


def read_plan(out: str, storage_options: dict[str, Any] | None = None) -> Plan:
    uri = storage.join(out, PLAN_DIR, PLAN_FILE)
    try:
        data = json.loads(storage.read_bytes(uri, storage_options))
    except FileNotFoundError as exc:
        raise InputError(
            f"{out} has no plan ({PLAN_DIR}/{PLAN_FILE}); run `skutag plan` or `skutag run`"
        ) from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the plan {uri}: {exc}") from exc
    if data.get("format") != FORMAT:
        raise InputError(f"{uri} is not a skutag plan (format {data.get('format')!r})")
    units = [Unit(**u) for u in data.pop("units")]
    data.pop("format")
    return Plan(out=out, units=units, **data)


def ensure_plan(
    sources: Sequence[str],
    out: str,
    *,
    part_rows: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Plan:
    """The plan of OUT: read it when it exists (and check it is for these sources), else make it."""
    if plan_exists(out, storage_options):
        plan = read_plan(out, storage_options)
        _check_same(plan, sources, part_rows)
        return plan
    return make_plan(sources, out, part_rows=part_rows or DEFAULT_PART_ROWS, storage_options=storage_options)


def _check_same(plan: Plan, sources: Sequence[str], part_rows: int | None) -> None:
    if sources and list(sources) != plan.sources:
        raise InputError(
            f"{plan.out} was planned for other sources ({' '.join(plan.sources)}); "
            "use another --out, or --overwrite to plan again"
        )
    if part_rows is not None and part_rows != plan.part_rows:
        raise InputError(f"{plan.out} was planned with --part-rows {plan.part_rows}, not {part_rows}")


def make_plan(
    sources: Sequence[str],
    out: str,
    *,
    part_rows: int = DEFAULT_PART_ROWS,
    storage_options: dict[str, Any] | None = None,
) -> Plan:
    """List, sort, dedupe and write the plan; returns whichever plan won the exclusive create."""
    counts = ListingCounts()
    token = secrets.token_hex(8)
    uploaded: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="skutag-plan-") as scratch:
            rows = _sorted_rows(list_sources(sources, counts, storage_options), scratch)
            units, total, duplicates, labelled, digest = _write_units(
                rows, out, token, part_rows, scratch, storage_options, uploaded
            )
    except BaseException:
        _remove_units(out, uploaded, storage_options)  # nothing of a failed plan stays behind
        raise
    plan = Plan(
        out=out,
        plan_id=digest,
        sources=[os.fspath(s) for s in sources],
        part_rows=part_rows,
        total=total,
        duplicates=duplicates,
        listing=counts.to_dict(),
        units=units,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        labelled=labelled,
    )
    if total == 0:
        raise InputError(f"no images found in {' '.join(map(str, sources))} (skipped: {counts.to_dict()})")
    body = json.dumps(plan.to_json(), indent=1).encode()
    try:
        created = storage.create_exclusive(storage.join(out, PLAN_DIR, PLAN_FILE), body, storage_options)
    except BaseException:
        if not plan_exists(out, storage_options):
            _remove_units(out, uploaded, storage_options)
        raise
    if created:
        return plan
    winner = read_plan(out, storage_options)  # read first: never delete what `_PLAN` names
    if {unit.file for unit in winner.units} & set(uploaded):
        return winner  # our own plan after all
    log.info("another process planned %s first; using its plan", out)
    _remove_units(out, uploaded, storage_options)
    return winner


def _remove_units(out: str, names: list[str], storage_options: dict[str, Any] | None) -> None:
    for name in names:
        try:
            storage.remove(storage.join(out, PLAN_DIR, name), storage_options)
        except Exception as exc:  # cleaning up after another failure: say so, keep the first error
            log.warning("could not remove %s: %s", name, exc)


def _sorted_rows(entries: Iterable[Entry], scratch: str) -> Iterator[Row]:
    """All entries sorted by (id, uri), spilling sorted runs of SORT_CHUNK rows to disk."""
    runs: list[str] = []
    chunk: list[Entry] = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) >= SORT_CHUNK:
            runs.append(_spill(chunk, scratch, len(runs)))
            chunk = []
    if not runs:
        yield from _rows(_sort(_table(chunk)))
        return
    if chunk:
        runs.append(_spill(chunk, scratch, len(runs)))
    batch = max(1024, MERGE_ROWS // len(runs))  # memory stays flat however many runs there are
    yield from heapq.merge(*(_read_run(path, batch) for path in runs), key=_sort_key)


def _sort_key(row: Row) -> tuple[str, str]:
    return row[0], row[1]  # (id, uri): the other columns may be None, which does not compare


def _table(chunk: list[Entry]) -> pa.Table:
    return pa.table(
        [
            strings([e.id for e in chunk]),
            strings([e.uri for e in chunk]),
            int64s([e.size for e in chunk]),
            strings([e.version for e in chunk]),
            strings([e.label for e in chunk]),
        ],
        schema=PLAN_SCHEMA,
    )


def _sort(table: pa.Table) -> pa.Table:
    return table.take(pc.sort_indices(table, sort_keys=[("id", "ascending"), ("uri", "ascending")]))


def _spill(chunk: list[Entry], scratch: str, number: int) -> str:
    path = os.path.join(scratch, f"run-{number:05d}.parquet")
    pq.write_table(_sort(_table(chunk)), path, compression="lz4", row_group_size=2048)
    return path


def _read_run(path: str, rows: int) -> Iterator[Row]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
        yield from _rows(batch)


def _rows(table: pa.Table | pa.RecordBatch) -> Iterator[Row]:
    columns = [table.column(name).to_pylist() for name in PLAN_SCHEMA.names]
    yield from zip(*columns, strict=True)


def _write_units(rows, out, token, part_rows, scratch, storage_options, uploaded: list[str]):
    units: list[Unit] = []
    digest = hashlib.sha256()
    buffer: list[tuple] = []
    total = duplicates = labelled = 0
    previous: tuple | None = None

    def flush() -> None:
        number = len(units)
        name = f"plan-{token}-{number:05d}.parquet"
        table = pa.table(
            [array([r[i] for r in buffer], f.type) for i, f in enumerate(PLAN_SCHEMA)],
            schema=PLAN_SCHEMA,
        )
        local = os.path.join(scratch, name)
        pq.write_table(table, local, compression="zstd")
        with open(local, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
        uploaded.append(name)  # before the upload: a failed upload may still have landed
        storage.upload(local, storage.join(out, PLAN_DIR, name), storage_options)
        units.append(Unit(number, name, len(buffer), total - len(buffer), buffer[0][0], buffer[-1][0]))
        buffer.clear()

    for row in rows:
        if previous is not None and row[0] == previous[0]:
            if row[1] == previous[1]:
                duplicates += 1
                continue
            raise InputError(
                f"two inputs share the id {row[0]!r}: {previous[1]} and {row[1]}; "
                "give their common parent directory as one source, or use a manifest with unique ids"
            )
        previous = row
        buffer.append(row)
        total += 1
        labelled += row[4] is not None
        if len(buffer) >= part_rows:
            flush()
    if buffer:
        flush()
    return units, total, duplicates, labelled, digest.hexdigest()
