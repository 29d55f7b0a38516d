"""Helpers for the `pixcade serve` tests: a fake model and a server running in a thread."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
from typing import Any, Iterator

from PIL import Image

from pixcade.errors import PixcadeError
from pixcade.serve.jobs import JobManager
from pixcade.serve.model import StagePlan
from pixcade.serve.requests import GenerationRequest, Limits
from pixcade.serve.server import PixcadeServer, make_server
from pixcade.web.limits import WebLimits
from pixcade.web.server import WebServer

FAKE_STAGES = [
    {"name": "base", "resolution": 16, "super_resolution": False, "steps": 3, "guidance": 4.0},
    {"name": "sr", "resolution": 32, "super_resolution": True, "steps": 2, "guidance": 2.0},
]


def fake_color(seed: int, stage: str, k: int) -> tuple[int, int, int]:
    """The fake model's image k of a stage is one flat colour, a function of what was asked."""
    return (seed * 37 + k * 11) % 256, (len(stage) * 50 + k) % 256, (seed + 3 * k) % 256


class FakeModel:
    """Follows the `Model` protocol. ``gates[stage]``, if set, is waited on before that stage
    finishes (so a test can look at the state in between); ``started`` is set when a job
    begins. A prompt containing "explode" fails the job, as a model bug would."""

    def __init__(self, stages: list[dict[str, Any]] | None = None):
        self.stages = stages or FAKE_STAGES
        self.gates: dict[str, threading.Event] = {}
        self.started = threading.Event()
        self.calls: list[GenerationRequest] = []

    def describe(self) -> list[dict[str, Any]]:
        return [dict(s) for s in self.stages]

    def check(self, request: GenerationRequest) -> dict[str, StagePlan]:
        names = [s["name"] for s in self.stages]
        idx = [names.index(s) for s in request.stages]
        if idx != list(range(len(idx))):
            raise PixcadeError("stages must be consecutive, starting at the base")
        steps = {}
        for s in request.stages:
            given = request.steps.get(s) if isinstance(request.steps, dict) else request.steps
            steps[s] = StagePlan(given or next(c["steps"] for c in self.stages if c["name"] == s), "fp32")
        return steps

    def generate(self, request, on_progress, on_stage_done) -> None:  # noqa: ANN001
        self.calls.append(request)
        self.started.set()
        if "explode" in request.prompt:
            raise RuntimeError("boom")
        steps = {name: plan.steps for name, plan in self.check(request).items()}
        for name in request.stages:
            for step in range(1, steps[name] + 1):
                on_progress(name, step, steps[name])
            gate = self.gates.get(name)
            if gate is not None:
                assert gate.wait(30), f"test never opened the gate of stage {name}"
            res = next(c["resolution"] for c in self.stages if c["name"] == name)
            on_stage_done(name, [Image.new("RGB", (res, res), fake_color(request.seed, name, k))
                                 for k in range(request.n)])


@contextlib.contextmanager
def running_server(model: Any, limits: Limits | None = None, keep: int = 64, start_worker: bool = True,
                   web: WebLimits | None = None) -> Iterator[PixcadeServer]:
    """A server on 127.0.0.1 (a free port) in a thread; closed, worker and all, on exit."""
    limits = limits or Limits()
    manager = JobManager(model, max_queue=limits.max_queue, keep=keep)
    server = make_server(manager, limits, "127.0.0.1", 0, web=web)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    if start_worker:
        manager.start()
    try:
        yield server
    finally:
        for gate in getattr(model, "gates", {}).values():
            gate.set()
        server.close()
        thread.join(10)


def request(server: WebServer, method: str, path: str, body: Any = None, raw: bytes | None = None,
            headers: dict[str, str] | None = None, source: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-case headers, body) of one HTTP request to the server (either web
    server); ``source``: the client's address (another 127.x.y.z is another client)."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30, source_address=(source, 0) if source else None)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=hdrs)
        res = conn.getresponse()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
    finally:
        conn.close()


def request_json(server: PixcadeServer, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
    status, _, data = request(server, method, path, body, **kw)
    return status, json.loads(data)
