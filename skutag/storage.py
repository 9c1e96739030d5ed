"""Local paths and object-store URLs (`s3://`, `gs://`, `https://`) behind one small interface.

Remote access goes through fsspec (`s3fs`, `gcsfs`, installed as the `s3` / `gcs` extras),
which honours the standard environment (the AWS credentials chain, `AWS_ENDPOINT_URL` for
MinIO, Ceph, R2 or a test server); anything else comes as `--storage-option KEY=VALUE`
(dotted keys nest: `config_kwargs.read_timeout=10`). Values of storage options are secrets
as far as skutag is concerned: they are never written to OUT or printed.

Writes are made for stores without rename: `write_bytes` is one PUT under the final name
(locally: a temporary file renamed into place), and `create_exclusive` is a conditional PUT
(`If-None-Match: *`; locally a hard link, which fails when the name exists); a conditional PUT
whose reply was lost and whose retry answers 412 reads the object back: its own bytes mean it won.

Reads of inputs (`read_object`) hold one of `max_per_host` slots of their host (bucket) per
machine (storage option `max_per_host`, `SKUTAG_MAX_PER_HOST`; default 8), and after a read that
failed for a whole retry budget, the next reads of that store in this process get one try each
until one succeeds (an outage costs one budget per process, not one per input).

Transient failures are retried within a time budget that outlasts a throttle (`skutag.retries`);
a write or read of OUT still failing after it raises `StoreUnavailable` (exit 75), and a
listing that fails names the prefix (`ListingError`, exit 75).
s3fs's listing cache is off (`use_listings_cache=False`): a long run never works from a stale listing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from skutag.errors import InputError, ListingError
from skutag.extras import MissingExtra
from skutag.retries import (
    BUDGET_ENV,
    BUDGET_OPTION,
    RETRIES,
    StoreUnavailable,
    fault_of,
    is_transient,
    one_line,
    remote_call,
    retry,
    retry_budget,
    skutag_option,
)

log = logging.getLogger(__name__)
REMOTE = re.compile(r"^(s3|s3a|gs|gcs|http|https)://", re.IGNORECASE)
PROTOCOL_EXTRA = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "http": None, "https": None}
# Timeouts for S3 requests unless the user sets them: a stalled store fails a request in
# seconds (and is retried) instead of hanging a decode worker for botocore's 60 s default.
S3_DEFAULTS: dict[str, Any] = {"config_kwargs": {"connect_timeout": 10, "read_timeout": 20}}
MAX_PER_HOST = 8  # concurrent input reads per host (bucket) from one machine, by default
PER_HOST_OPTION = "max_per_host"  # a storage option skutag reads itself (never passed to fsspec)
PER_HOST_ENV = "SKUTAG_MAX_PER_HOST"
SKUTAG_OPTIONS = (BUDGET_OPTION, PER_HOST_OPTION)


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int | None
    version: str | None


def is_remote(uri: str) -> bool:
    return bool(REMOTE.match(uri))


def join(base: str, *names: str) -> str:
    """`base/name` for a path or a URL."""
    if is_remote(base):
        return "/".join([base.rstrip("/"), *names])
    return os.path.join(base, *names)


def parse_options(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs to fsspec keyword arguments; dotted keys nest, numbers and booleans are typed."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--storage-option must be KEY=VALUE, got {pair.split('=')[0]!r}=...")
        target = options
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = _typed(value)
    return options


def _typed(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def redacted(options: dict[str, Any] | None) -> list[str]:
    """What may be recorded of storage options: their keys, never their values."""

    def keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
        found = []
        for key, value in sorted(tree.items()):
            found += keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]
        return found

    return keys(options or {})


def filesystem(uri: str, options: dict[str, Any] | None = None):
    """The fsspec filesystem for a remote URL (cached by fsspec per process and options)."""
    import fsspec

    protocol = uri.split("://", 1)[0].lower()
    kwargs = {k: v for k, v in (options or {}).items() if k not in SKUTAG_OPTIONS}
    if protocol in ("s3", "s3a"):
        merged = {**S3_DEFAULTS["config_kwargs"], **kwargs.get("config_kwargs", {})}
        kwargs["config_kwargs"] = merged
        kwargs.setdefault("use_listings_cache", False)
    try:
        return fsspec.filesystem(protocol, **kwargs)
    except ImportError as exc:
        extra = PROTOCOL_EXTRA.get(protocol)
        hint = f"pip install 'skutag[{extra}]'" if extra else "pip install aiohttp"
        raise MissingExtra(f"{protocol}:// needs an fsspec backend that is not installed: {hint}") from exc


def info(uri: str, options: dict[str, Any] | None = None) -> ObjectInfo:
    """Size and version of one object (raises InputError when it does not exist)."""
    try:
        return _object_info(uri, remote_call(lambda: filesystem(uri, options).info(uri), options, uri))
    except FileNotFoundError as exc:
        raise InputError(f"not found: {uri}") from exc


def lookup(uri: str, options: dict[str, Any] | None = None, *, timeout_s: float = 10.0) -> ObjectInfo | None:
    """Size and version of one object in one short try (an HTTP HEAD limited to `timeout_s`);
    None when it does not answer in time, or at all: the caller falls back to something safe."""
    try:
        fs = filesystem(uri, options)
        # fsspec's sync wrapper takes `timeout` itself: it stops waiting (the HEAD may hang on).
        detail = fs.info(uri, timeout=timeout_s) if getattr(fs, "async_impl", False) else fs.info(uri)
    except Exception:
        return None
    return _object_info(uri, detail)


def exists(uri: str, options: dict[str, Any] | None = None) -> bool:
    if not is_remote(uri):
        return os.path.exists(uri)
    return bool(remote_call(lambda: filesystem(uri, options).exists(uri), options, uri))


def walk_objects(prefix: str, options: dict[str, Any] | None = None) -> Iterator[ObjectInfo]:
    """Every object under a prefix, folder by folder in sorted order, with size and version from the
    listing (nothing is read). Each folder's listing is retried within the budget; one that still
    fails raises `ListingError` naming it: a prefix is listed completely or not at all (fsspec's
    `walk` would omit it silently by default)."""
    fs = filesystem(prefix, options)
    protocol = prefix.split("://", 1)[0]
    root = prefix.rstrip("/")
    pending, seen = [root], {root, fs._strip_protocol(root).rstrip("/")}
    while pending:
        folder = pending.pop()
        try:
            listing = retry(lambda: fs.ls(folder, detail=True), budget_s=retry_budget(options))  # noqa: B023
        except FileNotFoundError as exc:
            if folder == root:
                return  # no such prefix: the caller says "source not found"
            raise ListingError(f"cannot list {protocol}://{folder}/: it vanished during listing") from exc
        except Exception as exc:
            raise ListingError(f"cannot list {protocol}://{folder}/: {one_line(exc)}") from exc
        folders = []
        for detail in sorted(listing, key=lambda d: d["name"]):
            name = detail["name"].rstrip("/")
            if detail.get("type", "file") == "directory":
                if name not in seen:  # never the folder itself, nor a parent link (HTTP indexes)
                    seen.add(name)
                    folders.append(name)
            else:
                yield _object_info(f"{protocol}://{name}", detail)
        pending.extend(reversed(folders))


def _object_info(uri: str, detail: dict[str, Any]) -> ObjectInfo:
    version = detail.get("generation") or detail.get("ETag") or detail.get("etag")
    if version is None and detail.get("Last-Modified"):  # HTTP without an ETag
        version = f"lm:{detail['Last-Modified']}"
    if version is None and detail.get("mtime") is not None:
        version = f"{detail.get('size')}:{detail['mtime']}"
    size = detail.get("size")
    return ObjectInfo(
        uri, None if size is None else int(size), None if version is None else str(version).strip('"')
    )


def open_input(uri: str, options: dict[str, Any] | None = None):
    """A binary file object for reading (local or remote)."""
    if not is_remote(uri):
        return open(uri, "rb")
    return filesystem(uri, options).open(uri, "rb")


def read_object(uri: str, options: dict[str, Any] | None = None, *, max_bytes: int | None = None) -> bytes:
    """The bytes of a remote object, retried on transient errors; size checked before the read.

    Over HTTP the size is judged after the read: fsspec turns a failed HEAD (a 503 too) into
    FileNotFoundError, which would make a passing outage look permanent.
    """
    fs = filesystem(uri, options)
    store = store_of(uri)
    # A store that just failed a read for the whole budget gets one try per read until one
    # succeeds: an outage costs this process one budget, not one per input (the guard stops the run).
    budget = 0.0 if store in _DOWN else retry_budget(options)
    web = uri.lower().startswith(("http://", "https://"))
    try:
        with host_slot(store, options):
            if max_bytes is not None and not web:
                size = retry(lambda: fs.size(uri), budget_s=budget)
                if size is not None and size > max_bytes:
                    raise TooLarge(size)
            data = retry(lambda: fs.cat_file(uri), budget_s=budget)
    except Exception as exc:
        if is_transient(exc):
            _DOWN.add(store)
        raise
    _DOWN.discard(store)
    if max_bytes is not None and len(data) > max_bytes:
        raise TooLarge(len(data))
    return data


_DOWN: set[str] = set()  # stores whose last read in this process failed past the retry budget


def max_per_host(options: dict[str, Any] | None = None) -> int:
    """Concurrent reads of inputs allowed per host from this machine: the storage option
    `max_per_host`, else `SKUTAG_MAX_PER_HOST`, else `MAX_PER_HOST`; 0 means no cap."""
    return skutag_option(options, PER_HOST_OPTION, PER_HOST_ENV, MAX_PER_HOST, int, "max_per_host")


@contextlib.contextmanager
def host_slot(store: str, options: dict[str, Any] | None = None) -> Iterator[None]:
    """Hold one of the `max_per_host` slots of `store` while reading: a lock file per slot under the
    temp dir (`flock`), shared by every skutag process and thread of this user on this machine."""
    limit = max_per_host(options)
    if limit == 0:
        yield
        return
    import fcntl
    import hashlib
    import tempfile
    import time

    folder = os.path.join(tempfile.gettempdir(), f"skutag-hosts-{os.getuid()}")
    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, hashlib.sha256(store.encode()).hexdigest()[:16])
    held = None
    while held is None:
        for slot in range(limit):
            fd = os.open(f"{stem}.{slot}", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held = fd
            break
        else:
            time.sleep(0.02)
    try:
        yield
    finally:
        fcntl.flock(held, fcntl.LOCK_UN)
        os.close(held)


def store_of(uri: str) -> str:
    """The store of a URL: `s3://bucket`, `https://host:port` (what the per-host cap and outages count)."""
    scheme, _, rest = uri.partition("://")
    return f"{scheme.lower()}://{rest.split('/', 1)[0]}"


class TooLarge(Exception):
    def __init__(self, size: int):
        super().__init__(f"{size} bytes")
        self.size = size


# --- writing: OUT on local disk or object storage -------------------------------------------


def write_bytes(uri: str, data: bytes, options: dict[str, Any] | None = None) -> None:
    """Write a whole object under its final name: one PUT, or a local temporary renamed into place."""
    if not is_remote(uri):
        from skutag.fsio import atomic_write_bytes

        atomic_write_bytes(uri, data)
        return
    fs = filesystem(uri, options)
    remote_call(lambda: fs.pipe_file(uri, data), options, uri)


def create_exclusive(uri: str, data: bytes, options: dict[str, Any] | None = None) -> bool:
    """Create `uri` with `data` unless it exists; True when this call created it (atomic either way).

    Remotely a conditional PUT: when its reply is lost and the retry answers 412 (or the object
    exists), the object is read back: if it holds exactly `data`, this call's first attempt won.
    Callers make `data` unique to themselves (the plan names a random token), so equal bytes
    can only be their own write.
    """
    if not is_remote(uri):
        import tempfile

        directory = os.path.dirname(uri) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(uri)}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.link(tmp, uri)  # fails when `uri` exists: an exclusive, atomic create
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    fs = filesystem(uri, options)
    try:
        remote_call(lambda: fs.pipe_file(uri, data, mode="create"), options, uri)
    except FileExistsError:
        pass
    except Exception as exc:  # a conditional PUT that lost the race: 412 Precondition Failed
        fault = fault_of(exc)
        if fault is None or (fault.code != "PreconditionFailed" and fault.status != 412):
            raise
    else:
        return True
    try:
        return read_bytes(uri, options) == data  # our own write whose reply was lost?
    except FileNotFoundError:
        return False


def read_bytes(uri: str, options: dict[str, Any] | None = None) -> bytes:
    if not is_remote(uri):
        with open(uri, "rb") as f:
            return f.read()
    return remote_call(lambda: filesystem(uri, options).cat_file(uri), options, uri)


def list_names(directory: str, options: dict[str, Any] | None = None) -> list[str]:
    """Names directly inside a folder or prefix (empty when it does not exist)."""
    if not is_remote(directory):
        try:
            return sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
    fs = filesystem(directory, options)
    try:
        fs.invalidate_cache(directory)
        found = remote_call(lambda: fs.ls(directory.rstrip("/"), detail=False), options, directory)
    except FileNotFoundError:
        return []
    return sorted(name.rstrip("/").rsplit("/", 1)[-1] for name in found)


def remove(uri: str, options: dict[str, Any] | None = None) -> None:
    if not is_remote(uri):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(uri)
        return
    fs = filesystem(uri, options)
    with contextlib.suppress(FileNotFoundError):
        remote_call(lambda: fs.rm_file(uri), options, uri)


def upload(local_file: str, uri: str, options: dict[str, Any] | None = None) -> None:
    """Put a finished local file under its final name (an atomic copy locally, one upload remotely).

    Locally the copy goes through a temporary beside `uri`, then a rename: the scratch file
    may live on another filesystem (`/tmp`), where a plain rename would fail with EXDEV.
    """
    if not is_remote(uri):
        import shutil

        from skutag.fsio import atomic_path

        with atomic_path(uri) as tmp:
            shutil.copyfile(local_file, tmp)
        return
    fs = filesystem(uri, options)
    remote_call(lambda: fs.put_file(local_file, uri), options, uri)


def makedirs(directory: str) -> None:
    if not is_remote(directory):
        os.makedirs(directory, exist_ok=True)


__all__ = [
    "BUDGET_ENV",
    "BUDGET_OPTION",
    "RETRIES",
    "StoreUnavailable",
    "is_transient",
    "retry",
    "retry_budget",
]
