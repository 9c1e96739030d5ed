"""Retries of storage operations: what counts as transient, and a schedule that outlasts a throttle.

Every decision comes from what the clients expose, never from message text (`fault_of`):
the error code and HTTP status of a botocore `ClientError` (also when s3fs wrapped it in an
OSError, as its `__cause__`), the `status` of an aiohttp `ClientResponseError` (fsspec's
HTTP) or the `code` of a gcsfs `HttpError`, else the errno of an OSError, else the class of
a connection or timeout error. Transient: 408, 429, 5xx, throttling codes (`SlowDown`,
`Throttling`, ...), EIO / ESTALE / timeouts / resets, connection errors. Never transient:
403 / 404 / access denied / not found / credentials, and any other code a client names (a
KMS error is a KMS error, whatever errno s3fs gives it).

A remote operation is retried with exponential backoff and full jitter (each sleep uniform
in [0, min(MAX_BACKOFF_S, BACKOFF_S * 2^n)]) until its time budget is spent:
`RETRY_BUDGET_S` (60 s) unless `SKUTAG_RETRY_BUDGET_S` or the storage option `retry_budget_s`
says otherwise. A 429 or 503 that carries `Retry-After` waits that long instead (within the
budget). botocore's own retries run inside each attempt. One local file read keeps a short
schedule of `RETRIES` attempts (a bad disk block must not cost a minute per file).
"""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
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
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
    }
)
# Error codes (S3, GCS, botocore) that name a passing condition.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
        "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded",
        "ProvisionedThroughputExceededException", "BandwidthLimitExceeded", "RequestTimeout",
        "RequestTimeoutException", "InternalError", "ServiceUnavailable", "ServiceUnavailableException",
        "EC2ThrottledException", "PriorRequestNotComplete", "TransactionInProgressException",
        "503", "500", "502", "504", "429", "408",
    }
)  # fmt: skip
TRANSIENT_STATUSES = frozenset({408, 429})  # and every 5xx
# Classes of connection and timeout errors, by name anywhere in the class's MRO (botocore and
# aiohttp define their own, outside the builtin ConnectionError / TimeoutError).
TRANSIENT_CLASSES = frozenset(
    {
        "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
        "ConnectionError", "TimeoutError", "ServerDisconnectedError", "ClientConnectionError",
        "ClientPayloadError", "ServerTimeoutError", "IncompleteReadError", "ResponseStreamingError",
    }
)  # fmt: skip
# Storage-level causes (a code or a status): what the systemic guard names.
DENIED, CREDENTIALS, NO_BUCKET, NOT_FOUND, UNAVAILABLE = (
    "denied", "credentials", "no_bucket", "not_found", "unavailable",
)  # fmt: skip
CODE_CAUSES = {
    "AccessDenied": DENIED, "AllAccessDisabled": DENIED, "AccountProblem": DENIED, "Forbidden": DENIED,
    "InvalidObjectState": DENIED,
    "ExpiredToken": CREDENTIALS, "ExpiredTokenException": CREDENTIALS, "RequestExpired": CREDENTIALS,
    "InvalidAccessKeyId": CREDENTIALS, "SignatureDoesNotMatch": CREDENTIALS, "InvalidToken": CREDENTIALS,
    "InvalidClientTokenId": CREDENTIALS, "UnrecognizedClientException": CREDENTIALS,
    "NoSuchBucket": NO_BUCKET,
    "NoSuchKey": NOT_FOUND, "NotFound": NOT_FOUND, "404": NOT_FOUND,
}  # fmt: skip
CREDENTIAL_CLASSES = frozenset(
    {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "RefreshError"}
)
RETRIES = 4  # attempts of a short, attempt-counted schedule (one local file read)
BACKOFF_S = 0.25
MAX_BACKOFF_S = 8.0  # one sleep never exceeds this (full jitter: uniform in [0, min(cap, base * 2^n)])
MAX_RETRY_AFTER_S = 300.0  # a Retry-After longer than this is not waited for
RETRY_BUDGET_S = 60.0  # default time budget of a remote operation's retries
BUDGET_ENV = "SKUTAG_RETRY_BUDGET_S"
BUDGET_OPTION = "retry_budget_s"  # a storage option skutag reads itself (never passed to fsspec)
T = TypeVar("T")


def skutag_option(
    options: dict[str, Any] | None, option: str, env: str, default: float, parse: type, what: str
) -> Any:
    """A setting skutag reads itself: the storage option `option`, else the environment variable
    `env`, else `default`; parsed by `parse`, one line (exit 2) when it is not a number >= 0."""
    value = (options or {}).get(option, os.environ.get(env))
    if value is None or value == "":
        return default
    try:
        number = parse(value)
    except (TypeError, ValueError):
        raise InputError(
            f"{what} must be a {'whole ' if parse is int else ''}number, got {value!r}"
        ) from None
    if number < 0:
        raise InputError(f"{what} must be >= 0, got {value!r}")
    return number


def retry_budget(options: dict[str, Any] | None = None) -> float:
    """Seconds a remote operation keeps retrying transient failures: the storage option
    `retry_budget_s`, else `SKUTAG_RETRY_BUDGET_S`, else `RETRY_BUDGET_S`."""
    return skutag_option(options, BUDGET_OPTION, BUDGET_ENV, RETRY_BUDGET_S, float, "retry budget (seconds)")


class StoreUnavailable(TransientError):
    """A remote operation still failed with a transient error after the whole retry budget (exit 75)."""


@dataclass(frozen=True)
class Fault:
    """What a client said about a failed request: its error code, HTTP status and Retry-After."""

    code: str | None = None
    status: int | None = None
    retry_after_s: float | None = None


def fault_of(exc: BaseException) -> Fault | None:
    """The code / status a client attached to `exc` or to an exception it was raised from, or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _client_fault(current)
        if found is not None:
            return found
        current = current.__cause__ or current.__context__
    return None


def _client_fault(exc: BaseException) -> Fault | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and isinstance(response.get("Error"), dict):  # botocore ClientError
        meta = response.get("ResponseMetadata") or {}
        headers = {str(k).lower(): v for k, v in (meta.get("HTTPHeaders") or {}).items()}
        status = meta.get("HTTPStatusCode")
        return Fault(
            response["Error"].get("Code"),
            int(status) if status else None,
            _retry_after(headers.get("retry-after")),
        )
    status = getattr(exc, "status", None)  # aiohttp ClientResponseError (fsspec's HTTP)
    if isinstance(status, int) and type(exc).__name__.endswith("ResponseError"):
        headers = getattr(exc, "headers", None) or {}
        return Fault(None, status, _retry_after(headers.get("Retry-After")))
    code = getattr(exc, "code", None)  # gcsfs HttpError
    if isinstance(code, int) and type(exc).__name__ == "HttpError":
        return Fault(getattr(exc, "reason", None) or None, code)
    return None


def _retry_after(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        pass
    try:
        return max(0.0, parsedate_to_datetime(str(value)).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def is_transient(exc: BaseException) -> bool:
    """Errors worth another try (see the module docstring): decided by code, status, errno or class."""
    fault = fault_of(exc)
    if fault is not None:
        if fault.code in TRANSIENT_CODES:
            return True
        if fault.status is not None and (fault.status in TRANSIENT_STATUSES or fault.status >= 500):
            return fault.code not in CODE_CAUSES  # a 5xx, 408 or 429 with no code that says otherwise
        return False  # a client named another code: 403, 404, KMS, a bad request, ...
    return _transient_without_code(exc)


def _transient_without_code(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
            return False
        if isinstance(current, OSError) and current.errno is not None:
            return current.errno in TRANSIENT_ERRNOS
        if _class_names(current) & TRANSIENT_CLASSES:
            return True
        current = current.__cause__ or current.__context__
    return False


def cause_of(exc: BaseException) -> str | None:
    """The storage-level cause of a failed read (DENIED, CREDENTIALS, NO_BUCKET, NOT_FOUND,
    UNAVAILABLE: transient past the budget), or None for anything else (a local decode fault)."""
    if is_transient(exc):
        return UNAVAILABLE
    fault = fault_of(exc)
    if fault is not None:
        if fault.code in CODE_CAUSES:
            return CODE_CAUSES[fault.code]
        if fault.status == 403:
            return DENIED
        if fault.status == 401:
            return CREDENTIALS
        if fault.status == 404:
            return NOT_FOUND
        return None
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _class_names(current) & CREDENTIAL_CLASSES:
            return CREDENTIALS
        if isinstance(current, PermissionError):
            return DENIED
        if isinstance(current, FileNotFoundError):
            return NOT_FOUND
        current = current.__cause__ or current.__context__
    return None


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked for (`Retry-After` on a 429 or 503), or None."""
    fault = fault_of(exc)
    return None if fault is None else fault.retry_after_s


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
    (default `retry_budget()`), so a store that throttles for a minute is outlasted. A server's
    `Retry-After` replaces the jittered pause.
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
            asked = retry_after(exc)
            if asked is not None:  # the server said when: wait that long, not less
                pause = min(asked, MAX_RETRY_AFTER_S)
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
