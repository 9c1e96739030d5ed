"""Compare-and-swap writes for what can race (the lease, the commit log, the parts), and the start-up check.

`read_versioned` gives an object's bytes with its version (S3: the ETag; GCS: the generation;
locally inode, mtime and size) and its age by the store's own clock (the reply's `Date` minus
the object's `Last-Modified` / `updated`); `write_if` writes only if the object is still at a
version (None: only if absent): S3 `If-Match: ETAG` / `If-None-Match: *`, GCS
`ifGenerationMatch=GENERATION` / `ifGenerationMatch=0`, locally under an exclusive lock file
`.NAME.lock` that every compare-and-swap of that name takes; `remove_if` likewise (S3 `If-Match`,
GCS `ifGenerationMatch` on the DELETE); `version_of` reads the version alone. A retried
conditional write whose first attempt landed answers 412: the object is read back, and its own
bytes mean it won. `check_exclusive` proves once per store and process that a conditional create
is exclusive there, and refuses (exit 2) a store or client that silently overwrites.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from skutag.errors import InputError
from skutag.retries import StoreUnavailable, fault_of, remote_call
from skutag.storage import (
    create_exclusive,
    filesystem,
    is_remote,
    join,
    remove,
    store_of,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Versioned:
    """An object's bytes, the version they are (S3 ETag; locally inode, mtime and size) and how long
    ago they were written by the store's own clock (S3: its `Date` minus `Last-Modified`)."""

    data: bytes
    version: str
    age_s: float


def read_versioned(uri: str, options: dict[str, Any] | None = None) -> Versioned | None:
    """The object with its version, or None when it does not exist."""
    if not is_remote(uri):
        import time

        with _local_lock(uri):
            try:
                with open(uri, "rb") as f:
                    stat = os.fstat(f.fileno())
                    data = f.read()
            except FileNotFoundError:
                return None
        return Versioned(data, _local_version(stat), max(0.0, time.time() - stat.st_mtime))
    if _is_gcs(uri):
        return remote_call(lambda: _gcs_read_versioned(uri, options), options, uri)
    _require_s3(uri)
    return remote_call(lambda: _s3_read_versioned(uri, options), options, uri)


def _s3_read_versioned(uri: str, options: dict[str, Any] | None) -> Versioned | None:
    import hashlib
    from email.utils import parsedate_to_datetime

    fs = filesystem(uri, options)
    bucket, key, _ = fs.split_path(uri)
    for _attempt in range(5):
        try:
            head = fs.call_s3("head_object", Bucket=bucket, Key=key)
            data = fs.cat_file(uri)
        except FileNotFoundError:
            return None
        etag = head["ETag"].strip('"')
        if hashlib.md5(data, usedforsecurity=False).hexdigest() != etag:
            again = fs.call_s3("head_object", Bucket=bucket, Key=key)
            if again["ETag"].strip('"') != etag:
                continue  # written between the HEAD and the GET: read again
        headers = head.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        now = parsedate_to_datetime(headers["date"]) if "date" in headers else None
        age = (now - head["LastModified"]).total_seconds() if now is not None else 0.0
        return Versioned(data, etag, max(0.0, age))
    raise StoreUnavailable(f"{uri}: changed on every read; cannot tell its version")


def write_if(uri: str, data: bytes, version: str | None, options: dict[str, Any] | None = None) -> str | None:
    """Write `uri` only if it is still at `version` (None: only if it does not exist): a
    compare-and-swap (S3 `If-Match` / `If-None-Match: *`; locally under a lock file). Returns the
    new version, or None when another writer got there first (nothing was written)."""
    if not is_remote(uri):
        from skutag.fsio import atomic_write_bytes

        with _local_lock(uri):
            try:
                current = _local_version(os.stat(uri))
            except FileNotFoundError:
                current = None
            if current != version:
                return None
            atomic_write_bytes(uri, data)
            return _local_version(os.stat(uri))
    if _is_gcs(uri):
        return _gcs_write_if(uri, data, version, options)
    _require_s3(uri)
    fs = filesystem(uri, options)
    bucket, key, _ = fs.split_path(uri)
    condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": f'"{version}"'}
    try:
        reply = remote_call(
            lambda: fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition), options, uri
        )
    except (FileExistsError, FileNotFoundError):
        reply = None
    except Exception as exc:
        fault = fault_of(exc)
        if fault is None or (fault.code not in CONDITION_FAILED and fault.status not in (409, 412)):
            raise
        reply = None
    if reply is not None:
        return reply["ETag"].strip('"')
    now = read_versioned(uri, options)  # a retried PUT whose first attempt landed answers 412
    return now.version if now is not None and now.data == data else None


CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict")


def version_of(uri: str, options: dict[str, Any] | None = None) -> str | None:
    """The object's version alone (what `write_if` / `remove_if` compare), or None when it does not exist."""
    if not is_remote(uri):
        with _local_lock(uri):
            try:
                return _local_version(os.stat(uri))
            except FileNotFoundError:
                return None
    if _is_gcs(uri):
        found = remote_call(lambda: _gcs_metadata(uri, options), options, uri)
        return None if found is None else found[0]["generation"]
    _require_s3(uri)
    fs = filesystem(uri, options)
    bucket, key, _ = fs.split_path(uri)
    try:
        head = remote_call(lambda: fs.call_s3("head_object", Bucket=bucket, Key=key), options, uri)
    except FileNotFoundError:
        return None
    return head["ETag"].strip('"')


def remove_if(uri: str, version: str, options: dict[str, Any] | None = None) -> bool:
    """Remove `uri` only if it is still at `version`; True when removed."""
    if not is_remote(uri):
        with _local_lock(uri):
            try:
                if _local_version(os.stat(uri)) != version:
                    return False
                os.unlink(uri)
            except FileNotFoundError:
                return False
            return True
    if _is_gcs(uri):
        return _gcs_remove_if(uri, version, options)
    _require_s3(uri)
    fs = filesystem(uri, options)
    bucket, key, _ = fs.split_path(uri)
    try:
        remote_call(
            lambda: fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=f'"{version}"'), options, uri
        )
    except FileNotFoundError:
        return False
    except Exception as exc:
        fault = fault_of(exc)
        if fault is None or (fault.code not in CONDITION_FAILED and fault.status not in (409, 412)):
            raise
        return False
    return True


def _is_gcs(uri: str) -> bool:
    return uri.lower().startswith(("gs://", "gcs://"))


def _require_s3(uri: str) -> None:
    if not uri.lower().startswith(("s3://", "s3a://")):
        raise InputError(f"{uri}: compare-and-swap writes need a local path, s3:// or gs://")


# GCS: the JSON API's generation preconditions, through gcsfs's own request (auth, retries). gcsfs
# turns 412 into FileExistsError and 404 into FileNotFoundError.


def _gcs_metadata(uri: str, options: dict[str, Any] | None) -> tuple[dict[str, Any], Any] | None:
    """(object resource, reply headers) or None when the object does not exist."""
    import json

    fs = filesystem(uri, options)
    bucket, key, _ = fs.split_path(uri)
    try:
        headers, body = fs.call("GET", "b/{}/o/{}", bucket, key)
    except FileNotFoundError:
        return None
    return json.loads(body), headers


def _gcs_read_versioned(uri: str, options: dict[str, Any] | None) -> Versioned | None:
    """The object at one generation (its metadata first, then that generation's bytes), aged by the
    store's clock (the reply's `Date` minus the object's `updated`)."""
    from datetime import datetime
    from email.utils import parsedate_to_datetime

    found = _gcs_metadata(uri, options)
    if found is None:
        return None
    meta, headers = found
    fs = filesystem(uri, options)
    bucket, key, _ = fs.split_path(uri)
    try:
        _, data = fs.call("GET", "b/{}/o/{}", bucket, key, alt="media", generation=meta["generation"])
    except FileNotFoundError:  # replaced between the two reads: the generation read is gone
        return _gcs_read_versioned(uri, options)
    age = 0.0
    if headers.get("Date") and meta.get("updated"):
        updated = datetime.fromisoformat(meta["updated"].replace("Z", "+00:00"))
        age = (parsedate_to_datetime(headers["Date"]) - updated).total_seconds()
    return Versioned(bytes(data), str(meta["generation"]), max(0.0, age))


def _gcs_write_if(uri: str, data: bytes, version: str | None, options: dict[str, Any] | None) -> str | None:
    """A media upload with `ifGenerationMatch` (0: only if absent); the new generation or None."""
    import json
    from urllib.parse import quote

    fs = filesystem(uri, options)
    bucket, key, _ = fs.split_path(uri)
    url = f"{fs._location}/upload/storage/v1/b/{quote(bucket, safe='')}/o"

    def upload() -> Any:
        return fs.call(
            "POST", url, uploadType="media", name=key, ifGenerationMatch=version or "0", data=data,
            headers={"Content-Type": "application/octet-stream"},
        )  # fmt: skip

    try:
        _, body = remote_call(upload, options, uri)
    except FileExistsError:  # 412: another writer got there first, or our own retried upload did
        now = read_versioned(uri, options)
        return now.version if now is not None and now.data == data else None
    return str(json.loads(body)["generation"])


def _gcs_remove_if(uri: str, version: str, options: dict[str, Any] | None) -> bool:
    fs = filesystem(uri, options)
    bucket, key, _ = fs.split_path(uri)
    try:
        remote_call(
            lambda: fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=version), options, uri
        )
    except (FileExistsError, FileNotFoundError):  # 412: another version now; 404: gone
        return False
    return True


def _local_version(stat: os.stat_result) -> str:
    return f"{stat.st_ino}-{stat.st_mtime_ns}-{stat.st_size}"


@contextlib.contextmanager
def _local_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside `uri` (`.NAME.lock`) held by every compare-and-swap of it."""
    import fcntl

    directory, name = os.path.split(uri)
    os.makedirs(directory or ".", exist_ok=True)
    fd = os.open(os.path.join(directory, f".{name}.lock"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


_EXCLUSIVE_CHECKED: set[str] = set()


def check_exclusive(folder: str, options: dict[str, Any] | None = None) -> None:
    """Once per store and process: prove that a conditional create is exclusive there (a second
    create of one name must fail). A store or client that silently overwrites is refused (exit 2):
    leases, plans and commit logs would not be safe on it."""
    if not is_remote(folder):
        return
    store = store_of(folder)
    if store in _EXCLUSIVE_CHECKED:
        return
    import uuid

    probe = join(folder, f"_probe-{uuid.uuid4().hex}")
    try:
        first = create_exclusive(probe, b"first", options)
        second = create_exclusive(probe, b"second", options)
    finally:
        remove(probe, options)
    if not first or second:
        raise InputError(
            f"{store} does not honour conditional writes (If-None-Match: a second exclusive create of one "
            "object succeeded): leases, plans and commit logs are not safe there; use a store that does "
            "(AWS S3, MinIO, R2, recent Ceph) and s3fs >= 2024.12"
        )
    _EXCLUSIVE_CHECKED.add(store)
