"""One input as listing names it (`Entry`), and how a path or URL becomes one (local names, file:// URLs).

Shared by `skutag.listing` (folders, globs, lists) and `skutag.manifests` (CSV / Parquet), so
neither imports the other. A name that is not valid UTF-8 (`caf\\xe9.jpg` from an old NFS/SMB
share) still gives an input: its `id` escapes the bad bytes as `%XX` and its `uri` is a `file://`
URL whose percent-escapes decode (`urllib.parse.unquote_to_bytes`) to the exact bytes on disk.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from skutag import storage
from skutag.errors import InputError

# Every printable ASCII character but `%` stays as it is in an escaped id or file:// URL.
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%") + " "


@dataclass(frozen=True, slots=True)
class Entry:
    """One input: its identity, where to read it, and what incremental runs compare."""

    id: str
    uri: str
    size: int | None = None
    version: str | None = None
    label: str | None = None  # a manifest's `label` column: what the catalog says the image is


def escape_name(text: str) -> str:
    """Valid UTF-8 stays as it is; a name with undecodable bytes is percent-escaped whole (`%` too)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return quote(os.fsencode(text), safe=_SAFE)


def local_uri(path: str) -> str:
    """An absolute path, or a `file://` URL when the path has bytes that are not UTF-8."""
    path = os.path.abspath(path)
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return "file://" + quote(os.fsencode(path), safe=_SAFE)


def local_path(uri: str) -> str | bytes:
    """The inverse of `local_uri`: what `open()` takes (bytes for a non-UTF-8 `file://` URL)."""
    if uri.startswith("file://"):
        raw = unquote_to_bytes(uri[len("file://") :])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    return uri


def local_version(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}"


def entry_for_location(input_id: str, location: str, base: str, *, stat: bool = True) -> Entry:
    """An Entry for a path or URL named in a list or manifest (relative paths from `base`).

    `base` may be a URL (a manifest on object storage): a relative path then names an object
    beside the manifest (`s3://b/m/manifest.csv` + `a/b.jpg` = `s3://b/m/a/b.jpg`), never a
    file in the working directory. A local file is stat'ed for its size and `size:mtime_ns`
    version unless `stat` is False (a manifest that gives the version itself).
    """
    if "://" in location:
        if storage.is_remote(location):
            return Entry(input_id, location)
        if location.startswith("file://"):
            return _local_entry(input_id, os.fsdecode(local_path(location)), stat)
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]+://", location):
            raise InputError(
                f"unsupported URL scheme in {location!r} (use a path, file://, s3://, gs://, https://)"
            )
    if storage.is_remote(base):
        if location.startswith("/"):
            return _local_entry(input_id, location, stat)
        return Entry(input_id, f"{base.rstrip('/')}/{posixpath.normpath(location)}")
    if not location.startswith("/"):
        location = f"{base.rstrip('/')}/{location}" if base.startswith("/") else os.path.join(base, location)
    return _local_entry(input_id, location, stat)


def _local_entry(input_id: str, path: str, stat: bool) -> Entry:
    if not path.startswith("/") or "/." in path or "//" in path:
        path = os.path.abspath(path)
    uri = local_uri(path) if not path.isascii() else path  # an ASCII absolute path is its own uri
    if not stat:
        return Entry(input_id, uri)
    try:
        st = os.stat(path)
    except OSError:
        return Entry(input_id, uri)  # an `unreadable` row when it is run
    return Entry(input_id, uri, st.st_size, local_version(st))
