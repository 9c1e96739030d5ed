"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the test `moto_server` (standard library only).

Clients point `endpoint_url` (or `AWS_ENDPOINT_URL`) at `proxy.endpoint`; every request is
forwarded to the upstream server unchanged (path-style S3: `/bucket/key?query`) unless a rule
switched on by the test says otherwise. Rules, each switched on by one method:

- `fail_listing(prefix, status=500)`: ListObjectsV2 (`GET /bucket?list-type=2`) whose `prefix`
  starts with `prefix` answers `status` with an S3 error body.
- `drop_put_reply(key)`: the next conditional PUT (`If-None-Match`) of `key` (`bucket/key`) is
  forwarded and lands, then the connection is closed without a reply, once.
- `deny_gets(pattern=None)`: every GetObject (optionally only keys matching the regex `pattern`,
  searched in `bucket/key`) answers 403 AccessDenied.
- `slow_down(seconds)`: every request answers 503 SlowDown for `seconds`, counted from the first
  request that arrives after the call (so a subprocess's start-up does not eat the window).
- `hold(pattern)`: the next PUT whose `bucket/key` matches the regex `pattern` waits (the client's
  connection stays open) until `release_holds()`, then is forwarded; later PUTs pass.
- `strip_conditions()`: every request is forwarded without its `If-None-Match` / `If-Match` headers
  (a store or gateway that silently ignores conditional writes).
- `clear()`: all rules off.

`proxy.hits[rule]` counts how often each rule fired. `proxy.s3` is an `S3Server` whose `env`
and `client()` go through the proxy. Use it as a context manager, or through the `fault_proxy`
fixture of tests/conftest.py (it needs an `s3` fixture that yields the upstream `S3Server`).
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from tests.support.s3server import S3Server

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te"}


def _error_body(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message><RequestId>faultproxy</RequestId></Error>"
    ).encode()


class FaultProxy:
    """A threaded forwarding proxy with switchable faults (see the module docstring)."""

    def __init__(self, upstream: S3Server):
        self.upstream = upstream
        netloc = urlsplit(upstream.endpoint).netloc
        self._upstream_host, _, port = netloc.partition(":")
        self._upstream_port = int(port or 80)
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # --- rules -------------------------------------------------------------------------------
    def clear(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self._listing: tuple[str, int] | None = None
            self._drop_put: str | None = None
            self._deny: re.Pattern | None = None
            self._deny_on = False
            self._slow_until = 0.0
            self._slow_for: float | None = None
            self._strip = False
            self._holds: list[list] = []
            self._released = threading.Event()

    def fail_listing(self, prefix: str, status: int = 500) -> None:
        self._listing = (prefix, status)

    def drop_put_reply(self, key: str) -> None:
        self._drop_put = key.lstrip("/")

    def deny_gets(self, pattern: str | None = None) -> None:
        self._deny_on, self._deny = True, re.compile(pattern) if pattern else None

    def slow_down(self, seconds: float) -> None:
        self._slow_for = seconds

    def strip_conditions(self) -> None:
        self._strip = True

    def hold(self, pattern: str) -> None:
        with self._lock:
            self._holds.append([re.compile(pattern), 1])

    def release_holds(self) -> None:
        self._released.set()

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def s3(self) -> S3Server:
        return S3Server(self.upstream.process, self.endpoint)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # --- the handler -------------------------------------------------------------------------
    def _fault(self, method: str, path: str, query: dict[str, list[str]], headers) -> tuple | None:
        """(status, code, message) to answer instead of forwarding, 'drop' to drop the reply, or None."""
        with self._lock:
            if self._slow_for is not None:
                self._slow_until, self._slow_for = time.monotonic() + self._slow_for, None
            if time.monotonic() < self._slow_until:
                self.hits["slow_down"] += 1
                return (503, "SlowDown", "Please reduce your request rate.")
            key = path.lstrip("/")
            bucket_only = "/" not in key.rstrip("/")
            if self._listing and method == "GET" and query.get("list-type") == ["2"]:
                prefix, status = self._listing
                if query.get("prefix", [""])[0].startswith(prefix):
                    self.hits["fail_listing"] += 1
                    return (status, "InternalError", "We encountered an internal error.")
            object_get = method == "GET" and not bucket_only and not query
            if self._deny_on and object_get and (self._deny is None or self._deny.search(key)):
                self.hits["deny_gets"] += 1
                return (403, "AccessDenied", "Access Denied")
            for rule in self._holds:
                if method == "PUT" and rule[1] > 0 and rule[0].search(key):
                    rule[1] -= 1
                    self.hits["hold"] += 1
                    return "hold"
            if method == "PUT" and self._drop_put == key and "if-none-match" in headers:
                self._drop_put = None
                self.hits["drop_put_reply"] += 1
                return "drop"
        return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                split = urlsplit(self.path)
                query = parse_qs(split.query, keep_blank_values=True)
                fault = proxy._fault(
                    self.command, unquote(split.path), query, {k.lower() for k in self.headers}
                )
                if fault == "hold":
                    proxy._released.wait(300)
                    fault = None
                if fault is not None and fault != "drop":
                    status, code, message = fault
                    error = _error_body(code, message)
                    self._answer(
                        status,
                        [("Content-Type", "application/xml"), ("Content-Length", str(len(error)))],
                        error,
                    )
                    return
                upstream = http.client.HTTPConnection(proxy._upstream_host, proxy._upstream_port, timeout=60)
                try:
                    dropped = HOP_BY_HOP | ({"if-none-match", "if-match"} if proxy._strip else set())
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
                    if proxy._strip and {"if-none-match", "if-match"} & {k.lower() for k in self.headers}:
                        proxy.hits["strip_conditions"] += 1
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    out = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
                finally:
                    upstream.close()
                if fault == "drop":  # it landed upstream; the client never hears so
                    self.close_connection = True
                    return
                if self.command != "HEAD":
                    out = [(k, v) for k, v in out if k.lower() != "content-length"]
                    out.append(("Content-Length", str(len(data))))
                self._answer(response.status, out, data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
