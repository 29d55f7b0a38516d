"""One guard for both servers: a Starlette app whose middleware keeps other sites out.

Neither server has accounts, so what protects it is refusing what another web page can
make the browser send, before any route runs:

- ``Host`` not one of the allowed names (`limits.allowed_hosts`): Starlette's
  TrustedHostMiddleware answers 400. This is what stops DNS rebinding.
- A cross-site request: a state-changing method (anything but GET/HEAD/OPTIONS) whose
  ``Origin`` is not this server, or any request a browser marks ``Sec-Fetch-Site:
  cross-site``/``same-site`` (e.g. ``<img src>`` or ``fetch`` from another page, which
  could otherwise spend a client's limits) except top-level navigation to a page: 403.
  Starlette has no such middleware (its CORS middleware only decides what a page may
  read, not what reaches the routes), so it is `CrossSiteGuard` below.
- More requests in progress from one client address than ``max_client_requests``: 429.
  Counted after the checks above, so refused cross-site requests never use it up.

Every response gets a Content-Security-Policy (same-origin scripts, styles and images
only; no framing: ``frame-ancestors 'none'``), ``X-Content-Type-Options: nosniff`` and
``Cross-Origin-Resource-Policy: same-origin`` (another page can't even embed an image).
Every refusal, the guard's or a route's `RequestError`, is JSON ``{"error": reason}``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pixcade.web.errors import RequestError
from pixcade.web.limits import WebLimits

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                                 b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    """An API answer: JSON that no cache keeps (it is this moment's state, or a refusal)."""
    return JSONResponse(data, status, headers={"Cache-Control": "no-store", **(headers or {})})


def error_response(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return json_response({"error": message, **extra}, status, headers)


def cross_site_refusal(scope: Scope) -> str | None:
    """Why a request is another site's, or None (see the module doc)."""
    headers = Headers(scope=scope)
    method = scope["method"]
    site = headers.get("sec-fetch-site")
    if site in ("cross-site", "same-site"):
        navigation = headers.get("sec-fetch-mode") == "navigate" and headers.get("sec-fetch-dest") == "document"
        if not (navigation and method == "GET"):
            return f"a {site} {method} {scope['path']} (sent by another site's page) is refused"
    origin = headers.get("origin")
    if method not in SAFE_METHODS and origin is not None:
        if origin == "null" or urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
            return f"cross-origin {method} from {origin!r} refused"
    return None


class CrossSiteGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = cross_site_refusal(scope) if scope["type"] == "http" else None
        if refusal is not None:
            return await error_response(403, refusal)(scope, receive, send)
        await self.app(scope, receive, send)


class PerClientLimit:
    """At most ``max_requests`` requests in progress per client address (429 beyond)."""

    def __init__(self, app: ASGIApp, max_requests: int) -> None:
        self.app = app
        self.max_requests = max_requests
        self.active: Counter[str] = Counter()  # one event loop: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = scope["client"][0] if scope.get("client") else ""
        if self.active[client] >= self.max_requests:
            return await error_response(
                429, f"{self.max_requests} requests from {client} are already in progress; this server's limit "
                     "(max_client_requests) per client", {"Retry-After": "1"},
                limit="max_client_requests", max=self.max_requests)(scope, receive, send)
        self.active[client] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active[client] -= 1
            if not self.active[client]:
                del self.active[client]


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """The router's and static files' refusals (404, 405) as JSON that names the problem."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        return error_response(404, f"no such path: {request.url.path}")
    if exc.status_code == 405 and "Allow" in headers:
        allow = ", ".join(sorted(headers["Allow"].split(", ")))
        return error_response(405, f"method {request.method} not allowed on {request.url.path} (allowed: {allow})",
                              {"Allow": allow})
    if exc.status_code == 405:
        return error_response(405, f"method {request.method} not allowed on {request.url.path}", headers)
    return error_response(exc.status_code, str(exc.detail), headers)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    # A body that did not arrive in time: answer, then drop the connection.
    headers = {"Connection": "close"} if exc.status == 408 else {}
    return json_response(exc.to_json(), exc.status, headers)


def guarded_app(routes: Sequence[BaseRoute], hosts: Sequence[str], limits: WebLimits) -> Starlette:
    """A Starlette app of ``routes`` behind the guard, answering only Host names in ``hosts``."""
    return Starlette(
        routes=list(routes),
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts), www_redirect=False),
            Middleware(CrossSiteGuard),
            Middleware(PerClientLimit, max_requests=limits.max_client_requests),
        ],
        exception_handlers={HTTPException: _http_error, RequestError: _refused},
    )
