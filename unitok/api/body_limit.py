"""Refuse request bodies that are too large, too slow or ambiguously framed, before the app reads them.

Starlette has ``RequestBodyLimitMiddleware`` (FastAPI's ``max_body_size``), but it answers a
declared-too-large body in plain text, with one limit for every path; ours answers in the API's
JSON error shape with a limit per path (a generation request is a prompt, not an upload). Checks:

- a ``Content-Length`` over the limit is refused before any body byte is read, and a body sent
  without one (chunked) is counted as it streams in and refused as soon as it passes the limit;
- both ``Content-Length`` and ``Transfer-Encoding`` (request smuggling's signature; h11 accepts
  it and follows the chunked framing) is a 400;
- the whole body must arrive within ``body_timeout_s`` of the request head (a slow upload holds a
  connection and a worker otherwise: uvicorn has no body timeout), else 408.

Each refusal carries ``Connection: close``: the rest of that body is not wanted, so the server stops
reading the connection instead of draining it.
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from unitok.api.errors import CLOSE, ApiError, error_response


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, *, path_limits: dict[str, int] | None = None,
                 body_timeout_s: float | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.path_limits = path_limits or {}
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope["path"], self.max_body_bytes)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        refusal = None
        if declared is not None and b"transfer-encoding" in headers:
            refusal = ApiError(400, "send either Content-Length or Transfer-Encoding, not both", "bad_framing")
        elif declared is not None and declared.isdigit() and int(declared) > limit:
            refusal = _too_large(limit)
        if refusal is not None:
            await error_response(refusal.status, refusal.message, refusal.type, CLOSE)(scope, receive, send)
            return
        received = 0
        finished = False
        deadline = None if self.body_timeout_s is None else time.monotonic() + self.body_timeout_s

        async def receive_with_limits() -> Message:
            nonlocal received, finished
            if finished or deadline is None:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
                except asyncio.TimeoutError:
                    raise ApiError(408, f"the request body did not arrive within {self.body_timeout_s:g} s; "
                                        "send it at once (or a smaller one)", headers=CLOSE) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                finished = not message.get("more_body", False)
                if received > limit:
                    raise _too_large(limit)  # the app's error handler turns it into the 413 answer
            return message

        await self.app(scope, receive_with_limits, send)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body too large: the limit is {limit} bytes", headers=CLOSE)
