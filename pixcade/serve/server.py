"""The HTTP side of `pixcade serve`: a page, a JSON API and a Server-Sent Events stream.

Standard library only (`ThreadingHTTPServer`): one thread per connection does nothing but
parse, check and read state; the model runs on the job manager's single worker thread.

API (every error is JSON ``{"error": message}``, plus ``"limit"`` and ``"max"`` when a
configured limit was hit):
  GET  /                          the page (static/index.html, app.js, style.css)
  GET  /api/config                stages (defaults), limits
  GET  /api/queue                 queue and store counters
  POST /api/jobs                  {"prompt", "n", "seed", "guidance", "steps", "stages"}
                                  -> 202 {"id", "status_url", "events_url", ...job status}
  GET  /api/jobs/ID               job status: state, queue position, per-stage progress/images
  GET  /api/jobs/ID/events        text/event-stream: "status" events (same JSON), then "end"
  GET  /api/jobs/ID/images/STAGE/K.png[?download=1]   a stage's image K as PNG
Refusals: malformed JSON or wrong field types 400, unknown job or path 404, wrong method
405, body over max_body_bytes 413, a limit or an impossible request 422, full queue 503,
and 403 for requests another web page makes the browser send (below).

The server has no accounts, so it keeps other sites' pages out instead: on a loopback
address it answers only requests whose Host header names a loopback host (a page on
evil.example that rebinds its DNS name to 127.0.0.1 sends "Host: evil.example"), and it
refuses any state-changing request whose Origin is not the server itself (a cross-site
form or fetch POST).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from pixcade.errors import PixcadeError
from pixcade.serve.jobs import TERMINAL, Job, JobManager, QueueFull
from pixcade.serve.requests import Limits, RequestError, check_resolved_steps, parse_request

log = logging.getLogger(__name__)

STATIC_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
DRAIN_LIMIT = 1 << 20  # read (and drop) at most this much of an oversized body before answering
SSE_KEEPALIVE_S = 15.0

_JOB = r"/api/jobs/(?P<id>[A-Za-z0-9_-]{1,64})"
ROUTES: list[tuple[re.Pattern[str], dict[str, str]]] = [
    (re.compile(r"/"), {"GET": "page"}),
    (re.compile(r"/static/(?P<name>[a-z.]+)"), {"GET": "static"}),
    (re.compile(r"/api/config"), {"GET": "config"}),
    (re.compile(r"/api/queue"), {"GET": "queue"}),
    (re.compile(r"/api/jobs"), {"POST": "submit"}),
    (re.compile(_JOB), {"GET": "status"}),
    (re.compile(_JOB + r"/events"), {"GET": "events"}),
    (re.compile(_JOB + r"/images/(?P<stage>[A-Za-z0-9_.-]{1,64})/(?P<index>\d{1,4})\.png"), {"GET": "image"}),
]


def is_loopback(host: str) -> bool:
    """Whether a host name or address (IPv6 with or without brackets) is this machine's loopback."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_host(value: str) -> str:
    """The host part of a Host header value (``name``, ``name:port``, ``[v6]:port``)."""
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _static(name: str) -> bytes:
    return resources.files("pixcade.serve").joinpath("static", name).read_bytes()


class Handler(BaseHTTPRequestHandler):
    server: "PixcadeServer"
    server_version = "pixcade-serve"
    timeout = 30  # seconds a socket read/write may stall: a dead client can't pin a thread

    # -- plumbing -----------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode("utf-8")
        self._send(status, body, "application/json", {"Cache-Control": "no-store", **(headers or {})})

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        self._json(status, {"error": message, **extra}, headers)

    def _foreign_request(self, method: str) -> str | None:
        """Why this request must be refused as another site's, or None (see the module doc)."""
        # Browsers always send Host; a request without one (an HTTP/1.0 client) is no page's.
        host = self.headers.get("Host")
        if host is None:
            return None if self.headers.get("Origin") is None else "a request with an Origin needs a Host header"
        if is_loopback(self.server.server_address[0]) and not is_loopback(_split_host(host)):
            return (f"Host {host!r} is not a loopback name; this server listens on a loopback "
                    "address and answers only requests addressed to it (localhost, 127.0.0.1, [::1])")
        origin = self.headers.get("Origin")
        if method != "GET" and origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            return f"cross-origin {method} from {origin!r} refused"
        return None

    def _dispatch(self, method: str) -> None:
        refusal = self._foreign_request(method)
        if refusal is not None:
            return self._error(403, refusal)
        url = urlsplit(self.path)
        for pattern, methods in ROUTES:
            m = pattern.fullmatch(url.path)
            if m is None:
                continue
            if method not in methods:
                allow = ", ".join(sorted(methods))
                return self._error(405, f"method {method} not allowed on {url.path} (allowed: {allow})",
                                   {"Allow": allow})
            handler: Callable[..., None] = getattr(self, "route_" + methods[method])
            try:
                return handler(query=parse_qs(url.query), **m.groupdict())
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                self.close_connection = True
                return None
        self._error(404, f"no such path: {url.path}")

    do_GET = lambda self: self._dispatch("GET")  # noqa: E731
    do_POST = lambda self: self._dispatch("POST")  # noqa: E731
    do_PUT = lambda self: self._dispatch("PUT")  # noqa: E731
    do_DELETE = lambda self: self._dispatch("DELETE")  # noqa: E731
    do_PATCH = lambda self: self._dispatch("PATCH")  # noqa: E731

    def _job(self, job_id: str) -> Job | None:
        job = self.server.manager.get(job_id)
        if job is None:
            self._error(404, f"unknown job id {job_id!r} (never created, or expired from the store)")
        return job

    # -- routes ---------------------------------------------------------------------------

    def route_page(self, query: dict) -> None:
        self._send(200, _static("index.html"), STATIC_TYPES["index.html"],
                   {"Content-Security-Policy": "default-src 'self'", "Cache-Control": "no-cache"})

    def route_static(self, query: dict, name: str) -> None:
        if name not in STATIC_TYPES:
            return self._error(404, f"no such file: /static/{name}")
        self._send(200, _static(name), STATIC_TYPES[name], {"Cache-Control": "no-cache"})

    def route_config(self, query: dict) -> None:
        self._json(200, self.server.config_json())

    def route_queue(self, query: dict) -> None:
        self._json(200, self.server.manager.stats())

    def _read_json(self) -> Any:
        if self.headers.get("Transfer-Encoding"):
            raise RequestError(411, "send the body with a Content-Length (no chunked transfer)")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(411, "a Content-Length header is required") from None
        limit = self.server.limits.max_body_bytes
        if length < 0:
            raise RequestError(400, "bad Content-Length")
        if length > limit:
            self.rfile.read(min(length, DRAIN_LIMIT))  # so the client reads our answer, not a reset
            self.close_connection = True
            raise RequestError(413, f"request body is {length} bytes; this server's limit "
                                    f"(max_body_bytes) is {limit}", "max_body_bytes", limit)
        raw = self.rfile.read(length)
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RequestError(400, f"malformed JSON: {err}") from None

    def route_submit(self, query: dict) -> None:
        srv = self.server
        try:
            request = parse_request(self._read_json(), srv.limits, srv.stage_names)
            try:
                steps = srv.manager.model.check(request)
            except PixcadeError as err:
                raise RequestError(422, str(err)) from None
            check_resolved_steps(steps, srv.limits)
            job = srv.manager.submit(request, steps)
        except RequestError as err:
            return self._json(err.status, err.to_json())
        except QueueFull as err:
            return self._error(503, str(err), {"Retry-After": "5"}, limit="max_queue", max=srv.manager.max_queue)
        status = srv.manager.snapshot(job)
        urls = {"status_url": f"/api/jobs/{job.id}", "events_url": f"/api/jobs/{job.id}/events"}
        self._json(202, {**status, **urls}, {"Location": urls["status_url"]})

    def route_status(self, query: dict, id: str) -> None:
        job = self._job(id)
        if job is not None:
            self._json(200, self.server.manager.snapshot(job))

    def route_image(self, query: dict, id: str, stage: str, index: str) -> None:
        job = self._job(id)
        if job is None:
            return
        png = self.server.manager.image(job, stage, int(index))
        if png is None:
            return self._error(404, f"job {id!r} has no image {index} of stage {stage!r} (yet)")
        disposition = "attachment" if query.get("download") == ["1"] else "inline"
        filename = f"pixcade-{id}-{stage}-{index}.png"
        self._send(200, png, "image/png", {
            "Content-Disposition": f'{disposition}; filename="{filename}"',
            "Cache-Control": "private, max-age=3600",  # a finished stage's image never changes
        })

    def route_events(self, query: dict, id: str) -> None:
        manager = self.server.manager
        job = self._job(id)
        if job is None:
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.wfile.write(b"retry: 2000\n\n")
        seen = -1
        while True:
            snap = manager.snapshot(job)
            if snap["version"] != seen:
                seen = snap["version"]
                self.wfile.write(f"event: status\ndata: {json.dumps(snap)}\n\n".encode("utf-8"))
            if snap["state"] in TERMINAL or manager.stopping:
                self.wfile.write(b"event: end\ndata: {}\n\n")
                self.wfile.flush()
                return
            self.wfile.flush()
            if manager.wait(job, seen, SSE_KEEPALIVE_S) == seen and not manager.stopping:
                self.wfile.write(b": keep-alive\n\n")


class PixcadeServer(ThreadingHTTPServer):
    daemon_threads = True  # an open event stream must not keep the process alive

    def __init__(self, address: tuple[str, int], manager: JobManager, limits: Limits):
        self.manager = manager
        self.limits = limits
        self.stages = manager.model.describe()
        self.stage_names = [s["name"] for s in self.stages]
        unknown = [s for s in (limits.stages or ()) if s not in self.stage_names]
        if unknown:
            raise PixcadeError(
                f"--stages names {', '.join(map(repr, unknown))}, not in the model "
                f"(stages: {', '.join(self.stage_names)})"
            )
        if manager.max_queue != limits.max_queue:
            raise PixcadeError("the job manager's max_queue and the limits' max_queue differ")
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def config_json(self) -> dict[str, Any]:
        allowed = list(self.limits.stages) if self.limits.stages else self.stage_names
        return {"stages": [dict(s, allowed=s["name"] in allowed) for s in self.stages],
                "limits": self.limits.to_json()}

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._serving = True
        super().serve_forever(poll_interval)

    def close(self) -> None:
        """Stop the worker (waking every event stream), then the listener."""
        self.manager.stop()
        if getattr(self, "_serving", False):
            self.shutdown()  # blocks until serve_forever returns: only when it runs
        self.server_close()


def make_server(manager: JobManager, limits: Limits, host: str = "127.0.0.1", port: int = 8000) -> PixcadeServer:
    """A bound (not yet serving) server; call ``serve_forever()`` (e.g. in a thread)."""
    try:
        return PixcadeServer((host, port), manager, limits)
    except OSError as err:
        raise PixcadeError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
