"""GCS compare-and-swap (`skutag.conditional`) against a real GCS emulator (gcp-storage-emulator).

The emulator keeps generations but ignores every precondition (`ifGenerationMatch` included):
that an exclusive create or a generation-matched replace *fails* on GCS cannot be shown here. What
can: versions are generations; every create, replace and delete carries the precondition the GCS
JSON API documents (seen by a recording proxy in front of the emulator); and skutag's start-up
check refuses a store that ignores them, this emulator included (exit 2, before any lease). The
test starts and stops the emulator itself on 127.0.0.1. Expired credentials: a GCS endpoint on
127.0.0.1 that answers 401, read through gcsfs, is a `credentials` fault by its status.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

# gcsfs reads this once, at import: no gRPC probe of the bucket type (the emulator speaks no gRPC)
_ZB = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"
_set = _ZB not in os.environ and "gcsfs" not in sys.modules
if _set:
    os.environ[_ZB] = "false"
try:
    pytest.importorskip("gcsfs")
finally:
    if _set:
        del os.environ[_ZB]
pytest.importorskip("gcp_storage_emulator")

from skutag import conditional  # noqa: E402
from skutag.errors import InputError  # noqa: E402

BUCKET = "shop"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    """A plain HTTP proxy in front of the emulator that records (method, path, query) of every request."""

    def __init__(self, upstream_port: int):
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                split = urlsplit(self.path)
                outer.requests.append((self.command, split.path, parse_qs(split.query)))
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in ("connection", "host")
                    }
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    reply = upstream.getresponse()
                    data = reply.read()
                    self.send_response(reply.status)
                    for name, value in reply.getheaders():
                        if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def with_query(self, method: str, name: str) -> list[dict[str, list[str]]]:
        return [q for m, path, q in self.requests if m == method and name in path + str(q.get("name", ""))]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def gcs() -> Iterator[dict]:
    """The emulator on 127.0.0.1 (in memory, bucket `shop`) behind a recording proxy; both stopped after."""
    port = _free_port()
    emulator = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--port", str(port), "-H", "127.0.0.1",
         "--default-bucket", BUCKET, "--in-memory", "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    recorder = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and emulator.poll() is None, "the emulator did not start"
                time.sleep(0.1)
        recorder = Recorder(port)
        yield {"options": {"endpoint_url": recorder.endpoint, "token": "anon"}, "recorder": recorder}
    finally:
        if recorder is not None:
            recorder.close()
        emulator.terminate()
        emulator.wait(timeout=30)


def test_versions_are_generations_and_every_write_carries_its_precondition(gcs):
    options, recorder = gcs["options"], gcs["recorder"]
    uri = f"gs://{BUCKET}/cas/_lease.json"
    first = conditional.write_if(uri, b"one", None, options)
    read = conditional.read_versioned(uri, options)
    assert read is not None and read.data == b"one" and read.version == first
    assert conditional.version_of(uri, options) == first
    assert 0.0 <= read.age_s < 30  # by the store's clock: its Date against the object's `updated`
    second = conditional.write_if(uri, b"two", first, options)
    assert second is not None and second != first
    assert conditional.read_versioned(uri, options).data == b"two"
    assert conditional.remove_if(uri, second, options)
    assert conditional.read_versioned(uri, options) is None and conditional.version_of(uri, options) is None
    uploads = [q for q in recorder.with_query("POST", "cas/_lease.json") if q.get("uploadType")]
    assert [q["ifGenerationMatch"] for q in uploads] == [["0"], [first]]  # create, then replace at `first`
    deletes = recorder.with_query("DELETE", "cas%2F_lease.json") or recorder.with_query(
        "DELETE", "cas/_lease.json"
    )
    assert [q.get("ifGenerationMatch") for q in deletes] == [[second]]


def test_the_emulator_ignores_preconditions_and_skutag_refuses_it_at_start(gcs):
    """What the real service refuses (a second create with ifGenerationMatch=0) the emulator accepts:
    skutag's start-up check sees it and refuses the store before any lease is taken."""
    from skutag.batchrun.commit.lease import Lease

    options = gcs["options"]
    uri = f"gs://{BUCKET}/ignored/_lease.json"
    assert conditional.write_if(uri, b"first", None, options) is not None
    assert conditional.write_if(uri, b"second", None, options) is not None  # the emulator: no 412
    with pytest.raises(InputError, match="does not honour conditional writes"):
        Lease.acquire(f"gs://{BUCKET}/night/_lease.json", 5.0, options)
    assert conditional.version_of(f"gs://{BUCKET}/night/_lease.json", options) is None  # no lease taken


class Unauthorized:
    """A GCS JSON API endpoint on 127.0.0.1 whose credentials have expired: every request answers 401."""

    BODY = b'{"error": {"code": 401, "message": "Token has been expired or revoked.", "errors": [{"reason": "authError"}]}}'

    def __init__(self):
        body = self.BODY

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _deny(self) -> None:
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_HEAD = do_DELETE = _deny

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_expired_gcs_credentials_are_a_credentials_fault_by_their_status():
    """gcsfs raises its HttpError with code 401: `cause_of` names it `credentials` from the status (the
    systemic guard's exit 4 "invalid or expired credentials"), and it is not retried as transient."""
    from skutag import retries, storage

    server = Unauthorized()
    try:
        options = {"endpoint_url": server.endpoint, "token": "anon", "retry_budget_s": 5}
        started = time.monotonic()
        with pytest.raises(Exception) as raised:
            storage.read_object(f"gs://{BUCKET}/photo.jpg", options)
        assert time.monotonic() - started < 5  # not retried for the budget
    finally:
        server.close()
    assert type(raised.value).__name__ == "HttpError" or retries.fault_of(raised.value) is not None
    assert retries.fault_of(raised.value).status == 401
    assert not retries.is_transient(raised.value)
    assert retries.cause_of(raised.value) == retries.CREDENTIALS
