"""The HTTP side of `pixcade serve`: a page, a JSON API and a Server-Sent Events stream.

Routes only: the app runs behind the shared guard (`pixcade.web`: Host allow-list, no
cross-site requests, per-client limits, security headers, timeouts) on uvicorn's event
loop. Requests never wait on the model: it runs on the job manager's single worker
thread, and an event stream sleeps until the manager reports a change.

API (every error is JSON ``{"error": message}``, plus ``"limit"`` and ``"max"`` when a
configured limit was hit):
  GET  /                          the page (static/index.html, app.js, style.css)
  GET  /api/config                stages (defaults), limits
  GET  /api/queue                 queue and store counters
  POST /api/jobs                  {"prompt", "n", "seed", "guidance", "steps", "stages", "sampling"}
                                  -> 202 {"id", "status_url", "events_url", ...job status}
  GET  /api/jobs/ID               job status: state, queue position, per-stage progress/images
  GET  /api/jobs/ID/events        text/event-stream: "status" events (same JSON), then "end"
  GET  /api/jobs/ID/images/STAGE/K.png[?download=1]   a stage's image K as PNG
Refusals: malformed JSON or wrong field types 400 (also JSON nested too deep or with
over-long numbers), unknown job or path 404, wrong method 405, no body length 411, body
over max_body_bytes 413, a limit or an impossible request 422, too many requests in
progress from one client 429, full queue 503; a Host name not allowed 400 and requests
another web page makes the browser send 403 (see `pixcade.web.guard`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from importlib import resources
from typing import Any, AsyncIterator, Sequence

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from pixcade.errors import PixcadeError
from pixcade.serve.jobs import TERMINAL, Job, JobManager, QueueFull
from pixcade.serve.requests import Limits, RequestError, check_resolved_steps, parse_request
from pixcade.web.body import read_json
from pixcade.web.guard import error_response, guarded_app, json_response
from pixcade.web.limits import WebLimits, allowed_hosts, is_loopback
from pixcade.web.pages import page_routes
from pixcade.web.server import WebServer

SSE_KEEPALIVE_S = 15.0
STATIC = resources.files("pixcade.serve") / "static"


class ServeApi:
    """The routes, over one job manager and the server's limits."""

    def __init__(self, manager: JobManager, limits: Limits, web: WebLimits):
        self.manager, self.limits, self.web = manager, limits, web
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

    def routes(self) -> list[Any]:
        job = "/api/jobs/{id}"
        return [
            *page_routes(STATIC),
            Route("/api/config", self.config),
            Route("/api/queue", self.queue),
            Route("/api/jobs", self.submit, methods=["POST"]),
            Route(job, self.status),
            Route(job + "/events", self.events),
            Route(job + "/images/{stage}/{index:int}.png", self.image),
        ]

    def config_json(self) -> dict[str, Any]:
        allowed = list(self.limits.stages) if self.limits.stages else self.stage_names
        return {"stages": [dict(s, allowed=s["name"] in allowed) for s in self.stages],
                "limits": self.limits.to_json()}

    def _job(self, request: Request) -> Job:
        job_id = request.path_params["id"]
        job = self.manager.get(job_id)
        if job is None:
            raise RequestError(404, f"unknown job id {job_id!r} (never created, or expired from the store)")
        return job

    async def config(self, request: Request) -> Response:
        return json_response(self.config_json())

    async def queue(self, request: Request) -> Response:
        return json_response(self.manager.stats())

    def _check_and_queue(self, payload: Any) -> Job:
        request = parse_request(payload, self.limits, self.stage_names)
        try:
            plans = self.manager.model.check(request)
        except PixcadeError as err:
            raise RequestError(422, str(err)) from None
        check_resolved_steps({name: p.steps for name, p in plans.items()}, self.limits)
        return self.manager.submit(request, plans)

    async def submit(self, request: Request) -> Response:
        payload = await read_json(request, self.limits.max_body_bytes, self.web)
        try:
            # In a thread: the first request imports the pipeline (torch), and checking runs its rules.
            job = await run_in_threadpool(self._check_and_queue, payload)
        except QueueFull as err:
            return error_response(503, str(err), {"Retry-After": "5"}, limit="max_queue", max=self.manager.max_queue)
        urls = {"status_url": f"/api/jobs/{job.id}", "events_url": f"/api/jobs/{job.id}/events"}
        return json_response({**self.manager.snapshot(job), **urls}, 202, {"Location": urls["status_url"]})

    async def status(self, request: Request) -> Response:
        return json_response(self.manager.snapshot(self._job(request)))

    async def image(self, request: Request) -> Response:
        job = self._job(request)
        stage, index = request.path_params["stage"], request.path_params["index"]
        png = self.manager.image(job, stage, index)
        if png is None:
            raise RequestError(404, f"job {job.id!r} has no image {index} of stage {stage!r} (yet)")
        disposition = "attachment" if request.query_params.get("download") == "1" else "inline"
        return Response(png, media_type="image/png", headers={
            "Content-Disposition": f'{disposition}; filename="pixcade-{job.id}-{stage}-{index}.png"',
            "Cache-Control": "private, max-age=3600",  # a finished stage's image never changes
        })

    async def events(self, request: Request) -> Response:
        job = self._job(request)
        return StreamingResponse(self._stream(job), headers={"Content-Type": "text/event-stream",
                                                             "Cache-Control": "no-store"})

    async def _stream(self, job: Job) -> AsyncIterator[str]:
        """A "status" event per new version of the job, then "end" once it is over (or the
        server stops); a comment line every SSE_KEEPALIVE_S seconds of silence."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wake() -> None:  # called from the worker thread
            try:
                loop.call_soon_threadsafe(changed.set)
            except RuntimeError:  # the loop closed: the stream is gone already
                pass

        unsubscribe = self.manager.subscribe(wake)
        try:
            yield "retry: 2000\n\n"
            seen = -1
            while True:
                changed.clear()
                snap = self.manager.snapshot(job)
                if snap["version"] != seen:
                    seen = snap["version"]
                    yield f"event: status\ndata: {json.dumps(snap)}\n\n"
                if snap["state"] in TERMINAL or self.manager.stopping:
                    yield "event: end\ndata: {}\n\n"
                    return
                try:
                    await asyncio.wait_for(changed.wait(), SSE_KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
        finally:
            unsubscribe()


class PixcadeServer(WebServer):
    """`pixcade serve`'s app on a bound socket (see `WebServer`); Ctrl-C or `close` stops the
    job manager first, cancelling the running job, so no request waits for it."""

    def __init__(self, manager: JobManager, limits: Limits, host: str, port: int,
                 hosts: Sequence[str] = (), web: WebLimits | None = None):
        web = web or WebLimits()
        self.api = ServeApi(manager, limits, web)
        self.manager, self.limits = manager, limits
        self.hosts = allowed_hosts(host, hosts)
        app = guarded_app(self.api.routes(), self.hosts, web)
        super().__init__(app, host, port, web, on_stop=lambda: manager.stop(timeout=None, cancel=True))

    def close(self, timeout: float = 30.0) -> None:
        super().close(timeout)
        self.manager.stop(cancel=True)


def make_server(manager: JobManager, limits: Limits, host: str = "127.0.0.1", port: int = 8000,
                hosts: Sequence[str] = (), web: WebLimits | None = None) -> PixcadeServer:
    """A bound (not yet serving) server; call ``serve_forever()`` (e.g. in a thread).
    ``hosts``: Host names to answer besides the loopback ones (`allowed_hosts`)."""
    return PixcadeServer(manager, limits, host, port, hosts, web)


def serve(model: Any, limits: Limits, host: str, port: int, hosts: Sequence[str] = (), *, keep: int, ttl: float,
          label: str) -> None:
    """Serve ``model`` (a `serve.model.CascadeModel`) until Ctrl-C: one worker running jobs,
    at most ``limits.max_queue`` waiting, finished ones kept (``keep``, ``ttl``); ``label``
    names the model in the start-up line."""
    manager = JobManager(model, max_queue=limits.max_queue, keep=keep, ttl=ttl)
    server = make_server(manager, limits, host, port, hosts)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    if not is_loopback(host):
        print(f"pixcade serve: warning: listening on {host}, reachable from other machines; "
              f"there is no authentication (answering Host names: {', '.join(server.hosts)})", file=sys.stderr)
    manager.start()
    print(f"pixcade serve: {label} at {server.url}/", flush=True)
    try:
        server.serve_forever()  # Ctrl-C: the running job is cancelled at its next step, open requests end
    except KeyboardInterrupt:
        print("pixcade serve: stopped", file=sys.stderr)
    finally:
        # Joining the worker (rather than leaving a daemon thread inside torch at interpreter
        # exit) avoids an abort ("terminate called without an active exception").
        manager.stop(timeout=10, cancel=True)
        server.close()
