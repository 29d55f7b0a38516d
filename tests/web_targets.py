"""Both web servers behind one interface, so the guard's tests run against each the same way.

A `Target` is a live server in a thread with: a page, a static file, a JSON GET, a
state-changing POST (and its body), a route that reads a JSON body, and ``state()``: what
a request could have left behind (jobs stored; comparisons opened and votes stored).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from drawbench_fixtures import LiveServer, make_run
from serve_support import FakeModel, request, running_server

from pixcade.web.limits import WebLimits

KINDS = ["serve", "drawbench"]


@dataclass
class Target:
    kind: str
    host: str
    port: int
    page_asset: str
    json_get: str
    change: str  # a POST that changes state when allowed
    change_body: bytes
    json_route: str  # a POST that reads a JSON body
    state: Callable[[], Any]
    server: Any

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
             source: str | None = None) -> tuple[int, dict[str, str], bytes]:
        return request(self.server, method, path, raw=body, headers=headers, source=source)

    def change_request(self, headers: dict[str, str] | None = None, source: str | None = None) -> int:
        return self.call("POST", self.change, self.change_body, headers, source)[0]

    def connect(self, source: str | None = None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=30,
                                        source_address=(source, 0) if source else None)


@contextlib.contextmanager
def live_target(kind: str, tmp_path: Path, web: WebLimits | None = None) -> Iterator[Target]:
    if kind == "serve":
        with running_server(FakeModel(), web=web) as server:
            stats = server.manager.stats
            yield Target(kind, *server.server_address, "/static/app.js", "/api/config",
                         "/api/jobs", json.dumps({"prompt": "a red square"}).encode(), "/api/jobs",
                         lambda: stats()["stored"], server)
        return
    live = LiveServer(make_run(tmp_path / "run"), web=web)
    try:
        session = live.session
        yield Target(kind, *live.server.server_address, "/static/rate.js", "/images/notatoken12345/A/0",
                     "/api/next", b"", "/api/vote", lambda: (len(session._open), live.store.count()), live.server)
    finally:
        live.close()


def trickle(sock: socket.socket, data: bytes, interval: float, stop: threading.Event) -> None:
    """Send ``data`` a byte at a time until it is all sent, the server drops us, or ``stop``."""
    for k in range(len(data)):
        if stop.wait(interval):
            return
        try:
            sock.sendall(data[k:k + 1])
        except OSError:
            return
