"""One structured (JSON) access-log line per request, on the ``unitok.api.access`` logger.

A plain ASGI middleware rather than uvicorn's access log, because the line carries what only the
application knows (how many images the request held) and is machine-readable.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_logger = logging.getLogger("unitok.api.access")


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering
        state = scope.setdefault("state", {})  # shared with ``request.state`` in the routes

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            client = scope.get("client")
            access_logger.info(json.dumps({
                "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "n_images": state.get("n_images", 0),
                "request_id": state.get("request_id"),
                "client": f"{client[0]}:{client[1]}" if client else None,
            }))
