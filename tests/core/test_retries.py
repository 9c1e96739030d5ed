"""Retry decisions come from the clients' codes, statuses and errnos, never from message text."""

from __future__ import annotations

import errno
import time

import pytest

from skutag import retries


def client_error(code: str, status: int, message: str = "", headers: dict | None = None):
    from botocore.exceptions import ClientError

    response = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}},
    }
    return ClientError(response, "GetObject")


def wrapped(error: Exception) -> OSError:
    """As s3fs raises it: its own OSError, the ClientError as the cause (s3fs.errors.translate_boto_error)."""
    from s3fs.errors import translate_boto_error

    return translate_boto_error(error)


@pytest.mark.parametrize(
    ("code", "status", "transient", "cause"),
    [
        ("SlowDown", 503, True, retries.UNAVAILABLE),
        ("InternalError", 500, True, retries.UNAVAILABLE),
        ("SomethingNew", 502, True, retries.UNAVAILABLE),
        ("TooManyRequestsException", 429, True, retries.UNAVAILABLE),
        ("AccessDenied", 403, False, retries.DENIED),
        ("InvalidObjectState", 403, False, retries.DENIED),
        ("ExpiredToken", 400, False, retries.CREDENTIALS),
        ("NoSuchBucket", 404, False, retries.NO_BUCKET),
        ("NoSuchKey", 404, False, retries.NOT_FOUND),
        ("KMS.DisabledException", 400, False, None),  # s3fs gives it errno EIO: the code decides
    ],
)
def test_s3_errors_are_classified_by_their_code(code, status, transient, cause):
    pytest.importorskip("s3fs")
    text = "500 w=503 Service Unavailable"
    for error in (client_error(code, status, text), wrapped(client_error(code, status, text))):
        assert retries.is_transient(error) is transient, (code, error)
        assert retries.cause_of(error) == cause


def test_a_number_in_a_url_or_message_is_not_a_status():
    url = "https://img.example.com/p/123.jpg?w=500&h=503"
    assert not retries.is_transient(ValueError(f"cannot decode {url}: 500 Internal"))
    assert retries.cause_of(FileNotFoundError(url)) == retries.NOT_FOUND
    assert not retries.is_transient(FileNotFoundError(f"{url} 503 SlowDown"))


def test_errnos_and_connection_classes_decide_without_a_code():
    assert retries.is_transient(OSError(errno.ECONNREFUSED, "refused"))
    assert retries.is_transient(OSError(errno.EIO, "io"))
    assert not retries.is_transient(OSError(errno.EINVAL, "503 SlowDown"))
    assert retries.is_transient(TimeoutError())
    from botocore.exceptions import EndpointConnectionError

    assert retries.is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))


def test_retry_after_is_honoured():
    error = client_error("SlowDown", 503, headers={"retry-after": "0.4"})
    assert retries.retry_after(error) == pytest.approx(0.4)
    calls = []

    def action():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise error
        return "ok"

    assert retries.retry(action, budget_s=5, backoff_s=0.001) == "ok"
    assert calls[1] - calls[0] >= 0.39
