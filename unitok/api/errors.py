"""One JSON shape for every error the API returns, so clients parse failures the same way.

Every error body is ``{"error": {"message": "...", "type": "invalid_request", "param": null,
"code": "invalid_request", "status": 422}}``: OpenAI's error shape (``message``, ``type``,
``param``, ``code``, which the official ``openai`` client parses into its exceptions) plus the
HTTP ``status``. ``message`` says what was wrong and what to send instead. FastAPI's own errors
(validation, 404, 405, the body-size limit) are rewritten into this shape by the handlers here.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from unitok.errors import UserError

logger = logging.getLogger("unitok.api")

# Status -> error type for errors raised by FastAPI/Starlette rather than by our code.
_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    408: "request_timeout",
    415: "unsupported_media_type",
    422: "invalid_request",
    504: "timeout",
}
# nginx's status for "the client closed the connection before the answer": only the access log sees it.
CLIENT_CLOSED = 499
# Answers after which the server stops reading the connection (the rest of the body is not wanted).
CLOSE = {"Connection": "close"}


class ApiError(Exception):
    """A request the API refuses; ``message`` is shown to the client verbatim."""

    def __init__(self, status: int, message: str, type: str | None = None,
                 headers: dict[str, str] | None = None, *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "error")
        self.headers = headers
        self.param = param  # the request field at fault, as OpenAI reports it
        self.code = code or self.type  # e.g. OpenAI's "model_not_found"


def error_response(status: int, message: str, type: str | None = None,
                   headers: dict[str, str] | None = None, *, param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    type = type or _TYPES.get(status, "error")
    body = {"error": {"message": message, "type": type, "param": param, "code": code or type, "status": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def preview(value: object, limit: int = 80) -> str:
    """A short ``repr`` of a request value: only its first ``limit`` characters (or its length)
    are ever formatted, so an error about a 20 MB field costs nothing to write."""
    if isinstance(value, str | bytes):
        shown = repr(value[:limit])
        return shown + (f"… ({len(value)} characters)" if len(value) > limit else "")
    if isinstance(value, list | dict):
        return f"a {type(value).__name__} of {len(value)} items"
    shown = repr(value) if isinstance(value, int | float | bool) or value is None else f"a {type(value).__name__}"
    return shown[:limit]


def _describe_validation_error(error: dict) -> str:
    # Drop the leading "body" so the client sees the field it sent, e.g. "n" or "images.2".
    location = [str(part) for part in error.get("loc", ()) if part != "body"]
    where = ".".join(location) or "request body"
    message = f"{where}: {error.get('msg', 'invalid value')}"
    if "input" in error and error.get("type") not in ("missing", "json_invalid"):
        message += f" (got {preview(error['input'])})"
    return message


def _validation_param(errors: list[dict]) -> str | None:
    location = [str(part) for part in errors[0].get("loc", ()) if part != "body"] if errors else []
    return ".".join(location) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.message, error.type, error.headers, param=error.param,
                              code=error.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = str(error.detail)
        if error.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}; see /docs"
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs"
        return error_response(error.status_code, message, headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = list(error.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "request body is not valid JSON", "invalid_json")
        return error_response(422, "; ".join(_describe_validation_error(e) for e in errors[:5]),
                              param=_validation_param(errors))

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, error: ClientDisconnect) -> Response:
        # The client hung up mid-upload: nobody reads this answer, the access log records 499.
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, error: UserError) -> JSONResponse:
        # The project's "bad input" error, raised by the model code for inputs it cannot take.
        return error_response(422, str(error))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(error).__name__}); the server logged the details",
                              "internal_error")
