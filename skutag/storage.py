"""Local paths and object-store URLs (`s3://`, `gs://`, `https://`) behind one small interface.

Remote access goes through fsspec (`s3fs`, `gcsfs`, installed as the `s3` / `gcs` extras),
which honours the standard environment (the AWS credentials chain, `AWS_ENDPOINT_URL` for
MinIO, Ceph, R2 or a test server); anything else comes as `--storage-option KEY=VALUE`
(dotted keys nest: `config_kwargs.read_timeout=10`). Values of storage options are secrets
as far as skutag is concerned: they are never written to OUT or printed.

Writes are made for stores without rename: `write_bytes` is one PUT under the final name
(locally: a temporary file renamed into place), and `create_exclusive` is a conditional PUT
(`If-None-Match: *`; locally a hard link, which fails when the name exists). Reads retry
transient failures (EIO, ESTALE, timeouts, 5xx) with backoff before they give up.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from skutag.errors import InputError

REMOTE = re.compile(r"^(s3|s3a|gs|gcs|http|https)://", re.IGNORECASE)
PROTOCOL_EXTRA = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "http": None, "https": None}
# Local errors that may pass if tried again (NFS, flaky disks).
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.ESTALE,
        errno.ETIMEDOUT,
        errno.EAGAIN,
        errno.EINTR,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
    }
)
RETRIES = 4
BACKOFF_S = 0.25
# Timeouts for S3 requests unless the user sets them: a stalled store fails a request in
# seconds (and is retried) instead of hanging a decode worker for botocore's 60 s default.
S3_DEFAULTS: dict[str, Any] = {"config_kwargs": {"connect_timeout": 10, "read_timeout": 20}}
T = TypeVar("T")


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
    kwargs = dict(options or {})
    if protocol in ("s3", "s3a"):
        merged = {**S3_DEFAULTS["config_kwargs"], **kwargs.get("config_kwargs", {})}
        kwargs["config_kwargs"] = merged
    try:
        return fsspec.filesystem(protocol, **kwargs)
    except ImportError as exc:
        extra = PROTOCOL_EXTRA.get(protocol)
        hint = f"pip install 'skutag[{extra}]'" if extra else "pip install aiohttp"
        raise InputError(f"{protocol}:// needs an fsspec backend that is not installed: {hint}") from exc


def info(uri: str, options: dict[str, Any] | None = None) -> ObjectInfo:
    """Size and version of one object (raises InputError when it does not exist)."""
    try:
        return _object_info(uri, retry(lambda: filesystem(uri, options).info(uri)))
    except FileNotFoundError as exc:
        raise InputError(f"not found: {uri}") from exc


def exists(uri: str, options: dict[str, Any] | None = None) -> bool:
    if not is_remote(uri):
        return os.path.exists(uri)
    return bool(retry(lambda: filesystem(uri, options).exists(uri)))


def walk_objects(prefix: str, options: dict[str, Any] | None = None) -> Iterator[ObjectInfo]:
    """Every object under a prefix, sorted, with size and version from the listing (nothing is read)."""
    fs = filesystem(prefix, options)
    protocol = prefix.split("://", 1)[0]
    root = prefix.rstrip("/")
    for _dirpath, _dirnames, files in fs.walk(root, detail=True):
        for name in sorted(files):
            detail = files[name]
            if detail.get("type", "file") != "file":
                continue
            yield _object_info(f"{protocol}://{detail['name']}", detail)


def _object_info(uri: str, detail: dict[str, Any]) -> ObjectInfo:
    version = detail.get("generation") or detail.get("ETag") or detail.get("etag")
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
    web = uri.lower().startswith(("http://", "https://"))
    if max_bytes is not None and not web:
        size = retry(lambda: fs.size(uri))
        if size is not None and size > max_bytes:
            raise TooLarge(size)
    data = retry(lambda: fs.cat_file(uri))
    if max_bytes is not None and len(data) > max_bytes:
        raise TooLarge(len(data))
    return data


class TooLarge(Exception):
    def __init__(self, size: int):
        super().__init__(f"{size} bytes")
        self.size = size


def is_transient(exc: BaseException) -> bool:
    """Errors worth another try: NFS/IO hiccups, timeouts, connection resets, 5xx and throttling."""
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in TRANSIENT_ERRNOS  # a local error: its errno says it all (not a `500.jpg` name)
    name = type(exc).__name__
    text = str(exc)
    if any(word in name for word in ("Timeout", "Connect", "EndpointConnection", "ServerDisconnected")):
        return True
    return bool(
        re.search(r"\b(5\d\d|SlowDown|Throttl|RequestTimeout|InternalError|ServiceUnavailable)\b", text)
    )


def retry(action: Callable[[], T], *, attempts: int = RETRIES, backoff_s: float = BACKOFF_S) -> T:
    """Run `action`, retrying transient errors with exponential backoff; the last error propagates."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as exc:
            if attempt + 1 >= attempts or not is_transient(exc):
                raise
            time.sleep(backoff_s * (2**attempt))
    raise AssertionError("unreachable")


# --- writing: OUT on local disk or object storage -------------------------------------------


def write_bytes(uri: str, data: bytes, options: dict[str, Any] | None = None) -> None:
    """Write a whole object under its final name: one PUT, or a local temporary renamed into place."""
    if not is_remote(uri):
        from skutag.fsio import atomic_write_bytes

        atomic_write_bytes(uri, data)
        return
    fs = filesystem(uri, options)
    retry(lambda: fs.pipe_file(uri, data))


def create_exclusive(uri: str, data: bytes, options: dict[str, Any] | None = None) -> bool:
    """Create `uri` with `data` unless it exists; True when this call created it (atomic either way)."""
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
        retry(lambda: fs.pipe_file(uri, data, mode="create"))
    except FileExistsError:
        return False
    except Exception as exc:  # a conditional PUT that lost the race: 412 Precondition Failed
        if "PreconditionFailed" in str(exc) or "412" in str(exc):
            return False
        raise
    return True


def read_bytes(uri: str, options: dict[str, Any] | None = None) -> bytes:
    if not is_remote(uri):
        with open(uri, "rb") as f:
            return f.read()
    return retry(lambda: filesystem(uri, options).cat_file(uri))


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
        found = retry(lambda: fs.ls(directory.rstrip("/"), detail=False))
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
        retry(lambda: fs.rm_file(uri))


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
    retry(lambda: fs.put_file(local_file, uri))


def makedirs(directory: str) -> None:
    if not is_remote(directory):
        os.makedirs(directory, exist_ok=True)
