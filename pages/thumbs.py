"""The report's thumbnails: small JPEGs of the rows it lists, under OUT/_report/thumbs/, bounded in number.

A photo that cannot be read or decoded gets no thumbnail; the row says why (`thumb_error`) and the
report counts them, so a missing picture is never silent.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from skutag import storage

from .images import jpeg, read_image

MAX_THUMBS = 200
THREADS = 4


def thumb_name(row_id: str) -> str:
    return f"thumbs/{hashlib.sha1(row_id.encode()).hexdigest()[:16]}.jpg"


def write_thumbs(
    report: dict[str, Any], report_dir: str, storage_options: dict[str, Any] | None = None,
    limit: int = MAX_THUMBS,
) -> None:  # fmt: skip
    """Make a thumbnail for each listed row that has a uri (up to `limit`); fill in `thumb` / `thumb_error`."""
    rows = [row for _, row in sorted(report["rows"].items()) if row.get("uri")][:limit]
    storage.makedirs(storage.join(report_dir, "thumbs"))

    def one(row: dict[str, Any]) -> None:
        name = thumb_name(row["id"])
        try:
            data = jpeg(read_image(row["uri"], storage_options))
        except Exception as exc:  # any failure to read or decode: the row says so
            row["thumb"], row["thumb_error"] = None, f"{type(exc).__name__}: {exc}"
            return
        storage.write_bytes(storage.join(report_dir, *name.split("/")), data, storage_options)
        row["thumb"] = name

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, rows))
    report["thumbs"] = {
        "made": sum(1 for r in rows if r.get("thumb")),
        "failed": sum(1 for r in rows if r.get("thumb_error")),
        "limit": limit,
    }
