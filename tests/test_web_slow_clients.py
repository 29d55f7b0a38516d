"""Slow clients against both web servers: connections that send nothing, headers or a body
trickled a byte at a time. Other clients must be served meanwhile, and the server must
drop each slow connection once its request timeout passes (a body being read gets a 408
first). Then shutdown: `close` ends event streams, cancels the running and queued jobs and
frees the port.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from serve_support import running_server
from web_targets import KINDS, live_target, trickle

from pixcade.serve.jobs import FAILED
from pixcade.serve.model import StagePlan
from pixcade.web.limits import WebLimits

TIMEOUT_S = 3.0


def _closed_by_server(sock: socket.socket, within: float) -> tuple[bool, bytes]:
    """(whether the server closed the connection within ``within`` s, what it sent before)."""
    sock.settimeout(within)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
        return True, got
    except ConnectionResetError:
        return True, got
    except TimeoutError:
        return False, got


@pytest.mark.parametrize("kind", KINDS)
def test_slow_clients_do_not_block_others_and_are_dropped_on_timeout(kind, tmp_path) -> None:
    web = WebLimits(request_timeout_s=TIMEOUT_S, idle_timeout_s=1.0)
    with live_target(kind, tmp_path, web) as target:
        stop = threading.Event()
        started = time.monotonic()
        silent = [target.connect() for _ in range(3)]  # half-open: connect, then nothing
        headers = [target.connect() for _ in range(2)]
        body = target.connect()
        body.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 200\r\n\r\n" % target.json_route.encode())
        tricklers = [threading.Thread(target=trickle, args=(s, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X" * 200,
                                                            0.05, stop), daemon=True) for s in headers]
        tricklers.append(threading.Thread(target=trickle, args=(body, b" " * 200, 0.05, stop), daemon=True))
        for t in tricklers:
            t.start()
        try:
            # Everyone else is served at once while the slow ones hang on.
            latencies = []
            for _ in range(10):
                t0 = time.monotonic()
                assert target.call("GET", "/")[0] == 200
                assert target.call("POST", target.change, target.change_body)[0] in (200, 202)
                latencies.append(time.monotonic() - t0)
            assert time.monotonic() - started < TIMEOUT_S, "the others were not served before the timeout"
            assert max(latencies) < 1.0, latencies
            # Each slow connection is dropped by the server once the timeout has passed.
            for sock in silent + headers:
                closed, sent = _closed_by_server(sock, TIMEOUT_S + 5)
                assert closed and sent == b""
            closed, sent = _closed_by_server(body, TIMEOUT_S + 5)
            head, _, raw = sent.partition(b"\r\n\r\n")
            assert closed and head.startswith(b"HTTP/1.1 408"), sent[:100]
            assert f"did not arrive within {TIMEOUT_S:g} s" in json.loads(raw)["error"]
            assert time.monotonic() - started < TIMEOUT_S + 5
            assert target.call("GET", "/")[0] == 200
        finally:
            stop.set()
            for sock in silent + headers + [body]:
                sock.close()


def test_an_idle_keep_alive_connection_is_closed(tmp_path) -> None:
    with live_target("drawbench", tmp_path, WebLimits(idle_timeout_s=1.0)) as target:
        with target.connect() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            time.sleep(0.3)
            closed, sent = _closed_by_server(sock, 5)
            assert closed and sent.startswith(b"HTTP/1.1 200")


class SlowModel:
    """Steps forever, one every 10 ms, until the manager cancels it through on_progress."""

    def __init__(self) -> None:
        self.started = threading.Event()

    def describe(self):  # noqa: ANN201
        return [{"name": "base", "resolution": 8, "super_resolution": False, "steps": 1, "guidance": 1.0}]

    def check(self, request):  # noqa: ANN001, ANN201
        return {"base": StagePlan(1, "fp32")}

    def generate(self, request, on_progress, on_stage_done) -> None:  # noqa: ANN001
        self.started.set()
        for step in range(1, 10**6):
            on_progress("base", step, 10**6)
            time.sleep(0.01)


def test_close_cancels_the_running_job_ends_streams_and_frees_the_port() -> None:
    import http.client

    model = SlowModel()
    with running_server(model) as server:
        host, port = server.server_address
        job = json.loads(_post(host, port, {"prompt": "forever"}))
        assert model.started.wait(30)
        queued = json.loads(_post(host, port, {"prompt": "next"}))
        assert queued["state"] == "queued"
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("GET", f"/api/jobs/{job['id']}/events")
        stream = conn.getresponse()
        assert stream.status == 200
        t0 = time.monotonic()
        server.close()
        lines = stream.read().decode().splitlines()  # the server ends the stream
        assert "event: end" in lines
        last = json.loads([ln for ln in lines if ln.startswith("data: {\"")][-1][6:])
        assert time.monotonic() - t0 < 5
        snap = server.manager.snapshot(server.manager.get(job["id"]))
        assert snap["state"] == FAILED and snap["error"].startswith("cancelled")
        snap = server.manager.snapshot(server.manager.get(queued["id"]))
        assert snap["state"] == FAILED and snap["error"].startswith("cancelled")
        assert last["state"] in ("running", FAILED)
        with socket.socket() as again:  # the port is free again for a new server (closed
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections wait in TIME_WAIT)
            again.bind((host, port))
            again.listen()


def _post(host: str, port: int, body: dict) -> bytes:
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/api/jobs", body=json.dumps(body), headers={"Content-Type": "application/json"})
    data = conn.getresponse().read()
    conn.close()
    return data
