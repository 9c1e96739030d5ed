"""Resolve SOURCE arguments into the run's input list: sorted, deduplicated, with stable ids.

A source is a directory (recursive; image extensions, case-insensitive, others counted as
skipped), a single image, a glob, a text file of paths (one per line, `#` comments), or a
CSV/Parquet manifest with a `path` or `uri` column and an optional `id` column. Relative
paths in text files and manifests are relative to the file that lists them.

The id of an input is its path relative to the source root (directory or glob prefix), the
path as written in a text file, or the manifest's id. Inputs are sorted by id, so a rerun
and every shard see the same order. The same file reached twice counts once (`duplicates`);
two different files with one id are an error. The list is held as two Arrow string arrays
(contiguous buffers, shared copy-on-write with forked DataLoader workers).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from skutag.errors import InputError
from skutag.images import is_image_path

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class InputList:
    """The deterministic work list: `ids[i]`, `uris[i]` for i in [0, len)."""

    ids: pa.Array
    uris: pa.Array
    skipped: int  # non-image files found in directories
    duplicates: int  # inputs reached more than once, kept once

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        """sha256 over ids and uris: a resumed run must see exactly the same list."""
        digest = hashlib.sha256()
        for array in (self.ids, self.uris):
            for buffer in array.buffers():
                if buffer is not None:
                    digest.update(buffer)
        return digest.hexdigest()


def resolve_sources(sources: Sequence[str | os.PathLike]) -> InputList:
    """All sources, merged, sorted by id; raises InputError for a source that names nothing."""
    if not sources:
        raise InputError("no SOURCE given")
    by_uri: dict[str, str] = {}
    skipped = duplicates = 0
    for source in sources:
        found, source_skipped = _expand(os.fspath(source))
        skipped += source_skipped
        for input_id, uri in found:
            if uri in by_uri:
                duplicates += 1
            else:
                by_uri[uri] = input_id
    pairs = sorted((input_id, uri) for uri, input_id in by_uri.items())
    del by_uri
    for (id_a, uri_a), (id_b, uri_b) in zip(pairs, pairs[1:], strict=False):
        if id_a == id_b:
            raise InputError(
                f"two inputs share the id {id_a!r}: {uri_a} and {uri_b}; "
                "give their common parent directory as one source, or use a manifest with unique ids"
            )
    ids = pa.array([p[0] for p in pairs], pa.large_string())
    uris = pa.array([p[1] for p in pairs], pa.large_string())
    return InputList(ids=ids, uris=uris, skipped=skipped, duplicates=duplicates)


def _expand(source: str) -> tuple[list[tuple[str, str]], int]:
    path = Path(source)
    if path.is_dir():
        return _directory(path)
    if path.is_file():
        if is_image_path(path):
            return [(path.name, _uri(path))], 0
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            return list(_manifest(path)), 0
        return list(_path_list(path)), 0
    if GLOB_CHARS & set(source):
        return _glob(source), 0
    raise InputError(f"source not found: {source}")


def _uri(path: Path | str) -> str:
    return os.path.abspath(os.fspath(path))


def _directory(root: Path) -> tuple[list[tuple[str, str]], int]:
    found, skipped = [], 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in filenames:
            full = Path(dirpath, name)
            if is_image_path(name):
                found.append((full.relative_to(root).as_posix(), _uri(full)))
            else:
                skipped += 1
    return found, skipped


def _glob(pattern: str) -> list[tuple[str, str]]:
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if GLOB_CHARS & set(part)), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    matches = [Path(m) for m in glob.glob(pattern, recursive=True)]
    files = [m for m in matches if m.is_file()]
    if not files:
        raise InputError(f"source pattern matches no files: {pattern}")
    return [(m.relative_to(root).as_posix(), _uri(m)) for m in files]


def _path_list(path: Path) -> Iterator[tuple[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the list of paths {path}: {exc}") from exc
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            yield entry, _uri(path.parent / entry)


def _manifest(path: Path) -> Iterator[tuple[str, str]]:
    table = _read_table(path)
    names = set(table.column_names)
    location = "path" if "path" in names else "uri" if "uri" in names else None
    if location is None:
        raise InputError(f"manifest {path} needs a `path` or `uri` column (has {sorted(names)})")
    locations = _strings(table.column(location), path, location)
    ids = _strings(table.column("id"), path, "id") if "id" in names else locations
    for input_id, where in zip(ids, locations, strict=True):
        if where.startswith("file://"):
            where = where[len("file://") :]
        elif re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", where):
            raise InputError(f"manifest {path}: only local paths are supported, not {where}")
        yield input_id, _uri(path.parent / where)


def _read_table(path: Path) -> pa.Table:
    try:
        if path.suffix.lower() == ".csv":
            from pyarrow import csv

            options = csv.ConvertOptions(column_types={"id": pa.string(), "path": pa.string()})
            return csv.read_csv(path, convert_options=options)
        import pyarrow.parquet as pq

        return pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"cannot read manifest {path}: {str(exc).splitlines()[0]}") from exc


def _strings(column: pa.ChunkedArray, path: Path, name: str) -> list[str]:
    values = column.to_pylist()
    if any(v is None or v == "" for v in values):
        raise InputError(f"manifest {path} has empty values in column `{name}`")
    return [str(v) for v in values]
