"""A real image host on 127.0.0.1 (standard library HTTP server) with switchable misbehaviour.

`ImageHost(images)` serves `images` (name -> bytes) at `host.url(name)`. Modes, set as attributes:
`down` (every request answers 503), `throttle_first` (the first GET of every name answers 429 with
`Retry-After: throttle_first` seconds), `delay_s` (each GET waits this long before answering),
`slow` (name -> seconds: GETs of that name wait this long), `etags` (False: no ETag, so the
inputs have no version and `--since` hashes them).
It records when each GET of each name arrived (`gets`) and the most GETs it served at once
(`peak`). Use it as a context manager: the server stops on exit.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ImageHost:
    def __init__(self, images: dict[str, bytes]):
        self.images = images
        self.down = False
        self.throttle_first: float | None = None
        self.delay_s = 0.0
        self.slow: dict[str, float] = {}
        self.etags = True
        self.gets: dict[str, list[float]] = defaultdict(list)
        self.active = 0
        self.peak = 0
        self.requests = 0
        self._lock = threading.Lock()
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                with host._lock:
                    host.requests += 1
                    if self.command == "GET":
                        host.gets[name].append(time.monotonic())
                        first = len(host.gets[name]) == 1
                        host.active += 1
                        host.peak = max(host.peak, host.active)
                try:
                    if host.down:
                        self._send(503, b"down")
                        return
                    if self.command == "GET" and host.throttle_first is not None and first:
                        self._send(429, b"slow down", {"Retry-After": f"{host.throttle_first:g}"})
                        return
                    if self.command == "GET" and (host.delay_s or name in host.slow):
                        time.sleep(host.slow.get(name, host.delay_s))
                    data = host.images.get(name)
                    if data is None:
                        self._send(404, b"missing")
                        return
                    etag = {"ETag": f'"{len(data)}-{name}"'} if host.etags else {}
                    self._send(200, data, {"Content-Type": "image/jpeg", **etag})
                finally:
                    if self.command == "GET":
                        with host._lock:
                            host.active -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def __enter__(self) -> ImageHost:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)
