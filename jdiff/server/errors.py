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
        param: the request field at fault, when one is (OpenAI's `param`; the client shows it).
        headers: extra response headers (a 429's `Retry-After`, a 401's `WWW-Authenticate`).
        code: OpenAI's machine-readable `code` (e.g. `invalid_api_key`), when there is one.
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.headers, self.code = param, headers, code


def error_response(
    status: int,
    message: str,
    type: str = "invalid_request_error",
    headers: Mapping[str, str] | None = None,
    *,
    param: str | None = None,
    code: str | None = None,
) -> JSONResponse:
    """The JSON error body; `param` and `code` appear only when known."""
    error = {"message": message, "type": type}
    if param is not None:
        error["param"] = param
    if code is not None:
        error["code"] = code
    return JSONResponse({"error": error}, status_code=status, headers=dict(headers) if headers else None)


def error_param(errors) -> str | None:
    """The field the first pydantic / FastAPI validation error is about (`a.b`), or None for the body."""
    for err in errors[:1]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        return loc or None
    return None


def describe_errors(errors) -> str:
    """pydantic / FastAPI validation errors as one line: `field: problem; ...` (the first five)."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def busy(e: Exception) -> ApiError:
    """The 429 for a full queue (`batcher.QueueFull`), with its `Retry-After` guess in seconds."""
    retry = max(1, int(getattr(e, "retry_after", 1)))
    return ApiError(429, str(e), "rate_limit_error", headers={"Retry-After": str(retry)})


def install_handlers(app: FastAPI) -> None:
    """Makes every error `app` returns the JSON error body, bugs included (500, logged with a traceback)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return error_response(e.status, e.message, e.type, e.headers, param=e.param, code=e.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        return error_response(400, describe_errors(e.errors()), param=error_param(e.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        # The exception's headers carry what the status requires, e.g. a 405's `Allow`.
        return error_response(e.status_code, str(e.detail), kind, e.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        log.exception("%s %s: unhandled error", request.method, request.url.path)
        return error_response(500, f"internal error: {type(e).__name__}", "server_error")


__all__ = ["ApiError", "busy", "describe_errors", "error_param", "error_response", "install_handlers"]
