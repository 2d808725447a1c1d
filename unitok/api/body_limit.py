"""Refuse request bodies over the size limit before reading them.

Starlette has ``RequestBodyLimitMiddleware`` (FastAPI's ``max_body_size``), but it answers a
declared-too-large body in plain text; ours answers in the API's JSON error shape. Two checks:
a ``Content-Length`` over the limit is refused before any body byte is read, and a body sent
without one (chunked) is counted as it streams in and refused as soon as it passes the limit.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from unitok.api.errors import ApiError, error_response


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _error(self) -> ApiError:
        return ApiError(413, f"request body too large: the limit is {self.max_body_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            error = self._error()
            await error_response(error.status, error.message, error.type)(scope, receive, send)
            return
        received = 0

        async def receive_with_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._error()  # the app's error handler turns it into the 413 answer
            return message

        await self.app(scope, receive_with_limit, send)
