"""HTTP errors: every one is `{"error": {"message": ..., "type": ...}}`, whatever raised it.

Statuses: 400 for bad input (FastAPI's 422 included), 404, 405, 409, 413 for an oversized body, 429 for a
full queue, 503 while shutting down, 504 past the server's timeout, 500 for bugs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("jdiff.server")


class ApiError(Exception):
    """An error response: raised anywhere in a handler, turned into the JSON body by `install_handlers`.

    Args:
        status: the HTTP status.
        message: one line saying what was wrong and what to do.
        type: OpenAI's error type (`invalid_request_error`, `not_found_error`, `rate_limit_error`, ...).
    """

    def __init__(self, status: int, message: str, type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type


def error_response(
    status: int,
    message: str,
    type: str = "invalid_request_error",
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type}}, status_code=status, headers=headers)


def describe_errors(errors) -> str:
    """pydantic / FastAPI validation errors as one line: `field: problem; ...` (the first five)."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install_handlers(app: FastAPI) -> None:
    """Makes every error `app` returns the JSON error body, bugs included (500, logged with a traceback)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return error_response(e.status, e.message, e.type)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        return error_response(400, describe_errors(e.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        # The exception's headers carry what the status requires, e.g. a 405's `Allow`.
        return error_response(e.status_code, str(e.detail), kind, e.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        log.exception("%s %s: unhandled error", request.method, request.url.path)
        return error_response(500, f"internal error: {type(e).__name__}", "server_error")


__all__ = ["ApiError", "describe_errors", "error_response", "install_handlers"]
