"""Retries of storage operations: what counts as transient, and a schedule that outlasts a throttle.

Transient: EIO, ESTALE, timeouts, connection resets, 5xx (`500 InternalError`, `503 SlowDown`,
`ServiceUnavailable`), throttling; never 403 / 404 / access denied / not found. A remote
operation is retried with exponential backoff and full jitter (each sleep uniform in
[0, min(MAX_BACKOFF_S, BACKOFF_S * 2^n)]) until its time budget is spent: `RETRY_BUDGET_S`
(60 s) unless `SKUTAG_RETRY_BUDGET_S` or the storage option `retry_budget_s` says otherwise.
botocore's own retries run inside each attempt. One local file read keeps a short schedule
of `RETRIES` attempts (a bad disk block must not cost a minute per file).
"""

from __future__ import annotations

import errno
import os
import random
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from skutag.errors import InputError, TransientError

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
RETRIES = 4  # attempts of a short, attempt-counted schedule (one local file read)
BACKOFF_S = 0.25
MAX_BACKOFF_S = 8.0  # one sleep never exceeds this (full jitter: uniform in [0, min(cap, base * 2^n)])
RETRY_BUDGET_S = 60.0  # default time budget of a remote operation's retries
BUDGET_ENV = "SKUTAG_RETRY_BUDGET_S"
BUDGET_OPTION = "retry_budget_s"  # a storage option skutag reads itself (never passed to fsspec)
T = TypeVar("T")


def retry_budget(options: dict[str, Any] | None = None) -> float:
    """Seconds a remote operation keeps retrying transient failures: the storage option
    `retry_budget_s`, else `SKUTAG_RETRY_BUDGET_S`, else `RETRY_BUDGET_S`."""
    value = (options or {}).get(BUDGET_OPTION, os.environ.get(BUDGET_ENV))
    if value is None or value == "":
        return RETRY_BUDGET_S
    try:
        budget = float(value)
    except (TypeError, ValueError):
        raise InputError(f"retry budget must be a number of seconds, got {value!r}") from None
    if budget < 0:
        raise InputError(f"retry budget must be >= 0 seconds, got {value!r}")
    return budget


class StoreUnavailable(TransientError):
    """A remote operation still failed with a transient error after the whole retry budget (exit 75)."""


def is_transient(exc: BaseException) -> bool:
    """Errors worth another try: NFS/IO hiccups, timeouts, connection resets, 5xx and throttling
    (503 SlowDown, 500 InternalError, RequestTimeout). Access denied and not found never are."""
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno in TRANSIENT_ERRNOS:  # a local error: its errno says it all (not a `500.jpg` name)
            return True
        if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT):
            return False
    name = type(exc).__name__
    text = str(exc)
    if re.search(r"\b(403|404|AccessDenied|Forbidden|NoSuchKey|NoSuchBucket|InvalidAccessKeyId)\b", text):
        return False
    if any(word in name for word in ("Timeout", "Connect", "EndpointConnection", "ServerDisconnected")):
        return True
    if re.search(r"\b(5\d\d|SlowDown|Throttl\w*|RequestTimeout|InternalError|ServiceUnavailable)\b", text):
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_transient(cause)


def retry(
    action: Callable[[], T],
    *,
    attempts: int | None = None,
    budget_s: float | None = None,
    backoff_s: float = BACKOFF_S,
) -> T:
    """Run `action`, retrying transient errors; the last error propagates.

    With `attempts`: at most that many tries, sleeping `backoff_s * 2^n` between them (a short,
    fixed schedule for one local file). Otherwise: exponential backoff with full jitter (a sleep
    uniform in [0, min(MAX_BACKOFF_S, backoff_s * 2^n)]) until `budget_s` seconds have passed
    (default `retry_budget()`), so a store that throttles for a minute is outlasted.
    """
    if attempts is not None:
        for attempt in range(attempts):
            try:
                return action()
            except Exception as exc:
                if attempt + 1 >= attempts or not is_transient(exc):
                    raise
                time.sleep(backoff_s * (2**attempt))
        raise AssertionError("unreachable")
    budget = retry_budget() if budget_s is None else budget_s
    deadline = time.monotonic() + budget
    attempt = 0
    while True:
        try:
            return action()
        except Exception as exc:
            if not is_transient(exc):
                raise
            pause = random.uniform(0, min(MAX_BACKOFF_S, backoff_s * (2**attempt)))
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            attempt += 1


def remote_call(action: Callable[[], T], options: dict[str, Any] | None, uri: str) -> T:
    """`retry` within the storage budget; a transient error that outlasts it is `StoreUnavailable`."""
    budget = retry_budget(options)
    try:
        return retry(action, budget_s=budget)
    except Exception as exc:
        if is_transient(exc):
            raise StoreUnavailable(
                f"{uri}: the store stayed unavailable for the whole retry budget ({budget:g} s; "
                f"{BUDGET_ENV} or --storage-option {BUDGET_OPTION}=S): {one_line(exc)}"
            ) from exc
        raise


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
