"""The review page: a Starlette app over a `ReviewQueue`, served by uvicorn on 127.0.0.1.

Routes: `/` (the page), `/api/queue` (pending rows and the classes), `/image/{id}` (the photo of a
pending row, as a JPEG: only ids of the queue, never a path), `POST /api/decide`. No account: it
binds to localhost unless `--host` says otherwise.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from skutag.errors import InputError
from skutag.extras import require

from ..images import jpeg, read_image
from ..render import render
from .queue import ReviewQueue

PHOTO_PX = 512


def make_app(queue: ReviewQueue):
    """The Starlette application over `queue`."""
    require("starlette", "pages", "skutag review")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    def page(request: Request) -> HTMLResponse:
        return HTMLResponse(render("review.html", out=queue.out, who=queue.who))

    def pending(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "rows": queue.pending(),
                "classes": queue.classes,
                "heads": queue.heads,
                "decided_before": queue.decided_before,
                "decided_now": queue.decided_now,
            }
        )

    def image(request: Request) -> Response:
        row = queue.get(request.path_params["row_id"])
        if row is None:
            return Response("not a row of the review queue", status_code=404, media_type="text/plain")
        try:
            data = jpeg(read_image(row["uri"], queue.storage_options), PHOTO_PX, quality=85)
        except Exception as exc:  # the photo is unreadable now: say so, in the page
            return Response(f"cannot read the photo: {exc}", status_code=502, media_type="text/plain")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def decide(request: Request) -> JSONResponse:
        body = await request.json()
        if not isinstance(body, dict):
            return JSONResponse({"error": "expected a JSON object"}, status_code=400)
        try:
            left = queue.decide(
                str(body.get("id")), str(body.get("decision")), body.get("label"), body.get("attributes")
            )
        except KeyError:
            return JSONResponse({"error": "not a pending row"}, status_code=404)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"ok": True, "left": left})

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/queue", pending),
            Route("/image/{row_id:path}", image),
            Route("/api/decide", decide, methods=["POST"]),
        ]
    )


def serve(
    out: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    who: str,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Serve the review page of OUT until interrupted (port 0: a free one, printed on stderr)."""
    uvicorn = require("uvicorn", "pages", "skutag review")
    queue = ReviewQueue(out, who, storage_options)
    app = make_app(queue)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"skutag review: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"review: http://{shown}:{bound}/ ({len(queue.rows)} rows to review, {queue.decided_before} decided "
        f"before) -> decisions in {out}/_review/; Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
