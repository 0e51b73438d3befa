"""What every request goes through, as one plain ASGI middleware: the API key, the log line, the metrics.

- API key (`--api-key` / `JDIFF_API_KEY`): every `/v1/*` request needs `Authorization: Bearer KEY`, compared
  in constant time (`hmac.compare_digest`); else 401 with the JSON error body. `/`, `/health`, `/liveness`
  and `/metrics` stay open (load balancers and scrapers carry no key).
- One log line per request: method, path, status, and where its time went (the image endpoints fill in
  `request.state.timing` with queue and generate seconds).
- `Metrics.answered` per request, labelled with the route's path template.

A plain ASGI middleware, not `BaseHTTPMiddleware`: the endpoint below it sees the client's own `receive`,
so `request.is_disconnected()` works while it waits for the device.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from jdiff.server.errors import error_response
from jdiff.server.metrics import Metrics

log = logging.getLogger("jdiff.server")

OPEN = ("/", "/health", "/liveness", "/metrics")


def needs_key(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def authorized(scope: Scope, key: bytes) -> bool:
    """Whether the request carries `Authorization: Bearer <key>` (constant-time compare)."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return hmac.compare_digest(token.strip(), key)
    return False


class Observe:
    """The middleware; `api_key` None leaves every route open."""

    def __init__(
        self, app: ASGIApp, *, api_key: str | None, metrics: Metrics, routes: Sequence[BaseRoute] = ()
    ):
        self.app = app
        self.routes = list(routes)  # the app's own routes, to label requests answered before routing
        self.key = None if api_key is None else api_key.encode("utf-8")
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        timing: dict[str, float] = {}
        scope.setdefault("state", {})["timing"] = timing
        status = 500  # what an exception that escapes everything becomes

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.key is not None and needs_key(scope["path"]) and not authorized(scope, self.key):
                response = error_response(
                    401,
                    "missing or wrong API key: send the header 'Authorization: Bearer <key>' "
                    "(the key given to jdiff serve --api-key / JDIFF_API_KEY)",
                    "invalid_request_error",
                    {"WWW-Authenticate": "Bearer"},
                    code="invalid_api_key",
                )
                await response(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - t0
            self.metrics.answered(_endpoint(scope, self.routes), scope["method"], status, seconds)
            log.info(
                "%s %s %d queue %.3fs generate %.3fs total %.3fs",
                scope["method"],
                scope["path"],
                status,
                timing.get("queue", 0.0),
                timing.get("generate", 0.0),
                seconds,
            )


def _endpoint(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The path template of the route that served (or would serve) the request; `other` if none."""
    route = scope.get("route")
    if route is None:  # answered before routing (a 401): find the route it was for
        for candidate in routes:
            match, _ = candidate.matches(scope)
            if match != Match.NONE:
                route = candidate
                break
    return getattr(route, "path", None) or "other"


__all__ = ["OPEN", "Observe", "authorized", "needs_key"]
