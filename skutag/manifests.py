"""CSV and Parquet manifests as a stream of inputs: `id` plus `path` or `uri` (optional `version`, `label`).

Read a record batch at a time (local or object storage), so a manifest of millions of rows
costs one batch of memory. The id is a manifest row's identity: two ids that name the same
image are two inputs. Relative paths are relative to the manifest's folder, on object
storage too (`s3://b/m/manifest.csv` + `a/b.jpg` = `s3://b/m/a/b.jpg`). Without a `version`
(column or cell), local files get `size:mtime_ns` (a stat each); remote objects get theirs
from `skutag.listing`. A row that gives its version is trusted as it is: nothing is stat'ed.
A `label` column is the catalog's own category for the row: the run keeps it as
`manifest_label` and, for models with a review section, flags rows it disagrees with.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pyarrow as pa

from skutag import storage
from skutag.entries import Entry, entry_for_location
from skutag.errors import InputError

BATCH_ROWS = 16_384


def read_manifest_entries(location: str, storage_options: dict[str, str] | None = None) -> Iterator[Entry]:
    """Stream the rows of a manifest as Entries; raises InputError for a manifest that cannot be used."""
    remote = storage.is_remote(location)
    base = location.rsplit("/", 1)[0] if remote else os.path.dirname(os.path.abspath(location))
    folder = base.rstrip("/")
    for batch in read_batches(location, storage_options):
        names = set(batch.schema.names)
        column = "path" if "path" in names else "uri" if "uri" in names else None
        if column is None:
            raise InputError(f"manifest {location} needs a `path` or `uri` column (has {sorted(names)})")
        where = _strings(batch, column, location)
        ids = _strings(batch, "id", location) if "id" in names else where
        versions = _optional(batch, "version")
        labels = _optional(batch, "label")
        for row, (input_id, place) in enumerate(zip(ids, where, strict=True)):
            version = versions[row]  # an empty cell is no version, never the version ""
            if version and not remote and _plain(place):  # the common case of a big manifest, fast
                uri = place if place[0] == "/" else f"{folder}/{place}"
                yield Entry(input_id, uri, None, version, labels[row] or None)
                continue
            entry = entry_for_location(input_id, place, base, stat=not version)
            yield Entry(entry.id, entry.uri, entry.size, version or entry.version, labels[row] or None)


def _plain(place: str) -> bool:
    """A local ASCII path with nothing to normalise (no `.`/`..` parts, no `//`, no URL)."""
    return (
        place.isascii()
        and not place.startswith(".")
        and "/." not in place
        and "//" not in place
        and ("://" not in place)
    )


def read_batches(location: str, storage_options: dict[str, str] | None = None) -> Iterator[pa.RecordBatch]:
    """A CSV or Parquet manifest's record batches (the one reader of manifests: batch runs and training)."""
    try:
        handle = storage.open_input(location, storage_options)
    except OSError as exc:
        raise InputError(f"cannot read manifest {location}: {exc}") from exc
    try:
        with handle:
            if location.lower().endswith(".csv"):
                from pyarrow import csv

                convert = csv.ConvertOptions(
                    column_types={
                        "id": pa.string(),
                        "path": pa.string(),
                        "uri": pa.string(),
                        "version": pa.string(),
                        "label": pa.string(),
                        "split": pa.string(),
                    }
                )
                # A local file is opened by Arrow itself: through a Python file object its reader
                # buffered far ahead (RSS grew with the manifest's size).
                source = handle if storage.is_remote(location) else location
                read = csv.ReadOptions(block_size=1 << 20, use_threads=False)
                yield from csv.open_csv(source, convert_options=convert, read_options=read)
            else:
                import pyarrow.parquet as pq

                yield from pq.ParquetFile(handle).iter_batches(batch_size=BATCH_ROWS)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"cannot read manifest {location}: {str(exc).splitlines()[0]}") from exc


def _optional(batch: pa.RecordBatch, name: str) -> list[str | None]:
    """A column's values as strings, or all None when the manifest has no such column."""
    if name not in batch.schema.names:
        return [None] * batch.num_rows
    return batch.column(name).cast(pa.string()).to_pylist()


def _strings(batch: pa.RecordBatch, name: str, location: str) -> list[str]:
    values = batch.column(name).cast(pa.string()).to_pylist()
    if any(v is None or v == "" for v in values):
        raise InputError(f"manifest {location} has empty values in column `{name}`")
    return values
