"""One JSON shape for every error the API returns, so clients parse failures the same way.

Every error body is ``{"error": {"status": 422, "type": "invalid_request", "message": "..."}}``
where ``message`` says what was wrong and what to send instead. FastAPI's own errors (validation,
404, 405, the body-size limit) are rewritten into this shape by the handlers installed here.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from unitok.errors import UserError

logger = logging.getLogger("unitok.api")

# Status -> error type for errors raised by FastAPI/Starlette rather than by our code.
_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


class ApiError(Exception):
    """A request the API refuses; ``message`` is shown to the client verbatim."""

    def __init__(self, status: int, message: str, type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "error")
        self.headers = headers


def error_response(status: int, message: str, type: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"status": status, "type": type or _TYPES.get(status, "error"), "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _describe_validation_error(error: dict) -> str:
    # Drop the leading "body" so the client sees the field it sent, e.g. "n" or "images.2".
    location = [str(part) for part in error.get("loc", ()) if part != "body"]
    where = ".".join(location) or "request body"
    message = f"{where}: {error.get('msg', 'invalid value')}"
    if "input" in error and error.get("type") not in ("missing", "json_invalid"):
        shown = repr(error["input"])
        message += f" (got {shown[:80]}{'…' if len(shown) > 80 else ''})"
    return message


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.message, error.type, error.headers)

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
        return error_response(422, "; ".join(_describe_validation_error(e) for e in errors))

    @app.exception_handler(UserError)
    async def _user_error(request: Request, error: UserError) -> JSONResponse:
        # The project's "bad input" error, raised by the model code for inputs it cannot take.
        return error_response(422, str(error))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(error).__name__}); the server logged the details",
                              "internal_error")
