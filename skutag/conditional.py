"""Compare-and-swap writes for what can race (the lease, the commit log), and the start-up check.

`read_versioned` gives an object's bytes with its version (S3: the ETag; locally inode, mtime
and size) and its age by the store's own clock (S3: the reply's `Date` minus `Last-Modified`);
`write_if` writes only if the object is still at a version (None: only if absent): S3
`If-Match: ETAG` / `If-None-Match: *`, locally under an exclusive lock file `.NAME.lock` that
every compare-and-swap of that name takes; `remove_if` likewise. A retried conditional PUT
whose first attempt landed answers 412: the object is read back, and its own bytes mean it won.
GCS: the create is conditional (`storage.create_exclusive`), a replacement is not yet (read,
compare, write, with a warning). `check_exclusive` proves once per store and process that a
conditional create is exclusive there, and refuses (exit 2) a store or client that silently
overwrites.
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
    read_bytes,
    remove,
    store_of,
    write_bytes,
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
    if not uri.lower().startswith(("s3://", "s3a://")):
        return _plain_read_versioned(uri, options)
    return remote_call(lambda: _s3_read_versioned(uri, options), options, uri)


def _plain_read_versioned(uri: str, options: dict[str, Any] | None) -> Versioned | None:
    """GCS and others (not compare-and-swap yet, see `write_if`): the content's hash as version, the
    age by the store's `updated` time against this host's clock."""
    import time
    from datetime import datetime

    try:
        data = read_bytes(uri, options)
        detail = remote_call(lambda: filesystem(uri, options).info(uri), options, uri)
    except FileNotFoundError:
        return None
    updated = detail.get("updated") or detail.get("mtime")
    age = 0.0
    if updated is not None:
        text = str(updated).replace("Z", "+00:00")
        stamp = updated if isinstance(updated, datetime) else datetime.fromisoformat(text)
        age = max(0.0, time.time() - stamp.timestamp())
    return Versioned(data, _plain_version(data), age)


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
    if not uri.lower().startswith(("s3://", "s3a://")):
        # GCS: the exclusive create is conditional; a replacement is read-compare-write (not atomic yet)
        if version is None:
            return _plain_version(data) if create_exclusive(uri, data, options) else None
        now = _plain_read_versioned(uri, options)
        if now is None or now.version != version:
            return None
        log.warning("%s: replaced without a generation match (not compare-and-swap on this store)", uri)
        write_bytes(uri, data, options)
        return _plain_version(data)
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
    if not uri.lower().startswith(("s3://", "s3a://")):
        now = _plain_read_versioned(uri, options)
        if now is None or now.version != version:
            return False
        remove(uri, options)
        return True
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


def _plain_version(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


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
