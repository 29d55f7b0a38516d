"""`pixcade serve`'s HTTP API: refusals leave nothing behind, progress, images, the store, the CLI.

Most tests run the real server (loopback, free port) over a fake model whose stages can
be held at a gate; one runs a real tiny random cascade and checks the served images are
exactly `Cascade.generate`'s, stage by stage.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serve_support import FakeModel, fake_color, request, request_json, running_server

from pixcade.diffusion.settings import SamplingSettings
from pixcade.errors import PixcadeError
from pixcade.serve.jobs import DONE, JobManager
from pixcade.serve.model import StagePlan
from pixcade.pipeline import options
from pixcade.pipeline.images import png_bytes, save_png_atomic
from pixcade.serve.requests import GenerationRequest, Limits, RequestError, parse_request

LIMITS = Limits(max_prompt_chars=40, max_images=3, max_steps=5, max_queue=2, max_body_bytes=2048)


def _nothing_left(server, model: FakeModel, before: dict) -> None:
    after = server.manager.stats()
    assert (after["stored"], after["queued"]) == (before["stored"], before["queued"])
    assert not model.calls


@pytest.mark.parametrize("body, status, limit, words", [
    (b"{\"prompt\": ", 400, None, "malformed JSON"),
    (b"\xff\xfe not utf-8", 400, None, "malformed JSON"),
    (b"[\"a red square\"]", 400, None, "JSON object"),
    (b"{\"prompt\": \"a\", \"colour\": 1}", 400, None, "unknown field(s): colour"),
    (b"{\"prompt\": 5}", 400, None, "prompt must be a string"),
    (b"{\"prompt\": \"a\", \"n\": true}", 400, None, "n (images) must be an integer"),
    (b"{\"prompt\": \"a\", \"guidance\": \"high\"}", 400, None, "guidance"),
    (b"{\"prompt\": \"   \"}", 422, None, "prompt is empty"),
    (json.dumps({"prompt": "x" * 41}).encode(), 422, "max_prompt_chars", "41 characters"),
    (json.dumps({"prompt": "a", "n": 4}).encode(), 422, "max_images", "4 images"),
    (json.dumps({"prompt": "a", "n": 0}).encode(), 422, None, "at least 1"),
    (json.dumps({"prompt": "a", "steps": 6}).encode(), 422, "max_steps", "6 steps"),
    (json.dumps({"prompt": "a", "steps": {"sr": 9}}).encode(), 422, "max_steps", "9 steps"),
    (json.dumps({"prompt": "a", "steps": {"nope": 2}}).encode(), 422, None, "'nope'"),
    (json.dumps({"prompt": "a", "guidance": -1}).encode(), 422, None, "guidance weight must be >= 0"),
    (json.dumps({"prompt": "a", "stages": ["sr"]}).encode(), 422, None, "starting at the base"),
    (json.dumps({"prompt": "a", "seed": -1}).encode(), 422, None, "seed"),
    (json.dumps({"prompt": "a" * 3000}).encode(), 413, "max_body_bytes", "max_body_bytes"),
])
def test_refused_requests_name_the_problem_and_leave_nothing(body, status, limit, words) -> None:
    model = FakeModel()
    with running_server(model, LIMITS) as server:
        before = server.manager.stats()
        got, headers, raw = request(server, "POST", "/api/jobs", raw=body)
        data = json.loads(raw)
        assert got == status and headers["content-type"] == "application/json"
        assert words in data["error"]
        assert data.get("limit") == limit
        if limit is not None:
            assert data["max"] == getattr(LIMITS, limit) and str(getattr(LIMITS, limit)) in data["error"]
        _nothing_left(server, model, before)


@pytest.mark.parametrize("field, value, pipeline_check", [
    ("steps", 0, lambda: SamplingSettings(steps=0)),
    ("steps", {"sr": -2}, lambda: SamplingSettings(steps=-2)),
    ("guidance", -0.5, lambda: SamplingSettings(guidance_weight=-0.5)),
    ("guidance", {"base": 1.0, "nope": 2.0},
     lambda: options.check_stage_names("guidance", {"base": 1.0, "nope": 2.0}, ["base", "sr"])),
])
def test_option_values_are_refused_by_the_pipelines_rules(field, value, pipeline_check) -> None:
    # The server has no rules of its own on these values: it refuses what the pipeline
    # refuses, with the pipeline's words, and as a request the model can't run (422).
    with pytest.raises(PixcadeError) as expected:
        pipeline_check()
    with pytest.raises(RequestError) as refused:
        parse_request({"prompt": "a", field: value}, LIMITS, ["base", "sr"])
    assert refused.value.status == 422 and refused.value.limit is None
    assert str(refused.value) == str(expected.value)


def test_png_bytes_round_trip_and_the_atomic_writer_writes_the_same(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    data = png_bytes(Image.fromarray(arr))
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and (np.asarray(im.convert("RGB")) == arr).all()
    save_png_atomic(Image.fromarray(arr), tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes() == data and os.listdir(tmp_path) == ["a.png"]


def test_limits_are_inclusive() -> None:
    model = FakeModel()
    with running_server(model, LIMITS) as server:
        status, job = request_json(server, "POST", "/api/jobs", {"prompt": "x" * 40, "n": 3, "steps": 5})
        assert status == 202 and [s["total"] for s in job["stages"]] == [5, 5]


def test_stage_limits_and_defaults_over_the_step_limit() -> None:
    model = FakeModel()
    with running_server(model, Limits(stages=("base",), max_steps=2)) as server:
        before = server.manager.stats()
        status, data = request_json(server, "POST", "/api/jobs", {"prompt": "a", "stages": ["base", "sr"], "steps": 2})
        assert status == 422 and data["limit"] == "stages" and data["max"] == ["base"] and "'sr'" in data["error"]
        # The base's saved default (3 steps) is over this server's limit of 2.
        status, data = request_json(server, "POST", "/api/jobs", {"prompt": "a"})
        assert status == 422 and data["limit"] == "max_steps" and "defaults to 3 steps" in data["error"]
        _nothing_left(server, model, before)
        status, job = request_json(server, "POST", "/api/jobs", {"prompt": "a", "steps": 2})
        assert status == 202 and [s["name"] for s in job["stages"]] == ["base"]
        _, config = request_json(server, "GET", "/api/config")
        assert [s["allowed"] for s in config["stages"]] == [True, False] and config["limits"]["max_steps"] == 2


def test_unknown_job_ids_and_paths_are_404() -> None:
    model = FakeModel()
    with running_server(model) as server:
        for path in ("/api/jobs/nosuchjob", "/api/jobs/nosuchjob/events", "/api/jobs/nosuchjob/images/base/0.png",
                     "/api/jobs/../../etc/passwd", "/static/secret.py", "/nothing-here"):
            status, data = request_json(server, "GET", path)
            assert status == 404 and data["error"], path
        status, job = request_json(server, "POST", "/api/jobs", {"prompt": "a"})
        _wait_done(server, job["id"])
        for path in (f"/api/jobs/{job['id']}/images/base/1.png", f"/api/jobs/{job['id']}/images/nope/0.png"):
            status, data = request_json(server, "GET", path)
            assert status == 404 and "has no image" in data["error"]
        assert server.manager.stats()["stored"] == 1


def test_wrong_methods_are_405_with_allow() -> None:
    # Every GET route answers HEAD too (Starlette's routing does; http.server's routes did not).
    with running_server(FakeModel()) as server:
        for method, path, allow in (("GET", "/api/jobs", "POST"), ("PUT", "/api/jobs", "POST"),
                                    ("POST", "/api/config", "GET, HEAD"), ("DELETE", "/api/jobs/abc", "GET, HEAD"),
                                    ("PATCH", "/", "GET, HEAD")):
            status, headers, raw = request(server, method, path, body={} if method != "GET" else None)
            assert status == 405 and headers["allow"] == allow, (method, path)
            assert method in json.loads(raw)["error"]
        assert server.manager.stats()["stored"] == 0


def test_full_queue_is_refused_with_503_and_nothing_stored() -> None:
    model = FakeModel()
    model.gates["base"] = threading.Event()
    with running_server(model, Limits(max_queue=2)) as server:
        first = request_json(server, "POST", "/api/jobs", {"prompt": "running"})[1]
        assert model.started.wait(30)  # the worker holds job 1; the queue is empty again
        queued = [request_json(server, "POST", "/api/jobs", {"prompt": f"waiting {k}"}) for k in range(2)]
        assert [s for s, _ in queued] == [202, 202] and [j["queue_position"] for _, j in queued] == [1, 2]
        before = server.manager.stats()
        assert (before["queued"], before["running"], before["stored"]) == (2, 1, 3)
        status, headers, raw = request(server, "POST", "/api/jobs", {"prompt": "one too many"})
        data = json.loads(raw)
        assert status == 503 and headers["retry-after"] and "queue is full" in data["error"]
        assert data["limit"] == "max_queue" and data["max"] == 2
        after = server.manager.stats()
        assert (after["queued"], after["stored"]) == (2, 3)
        model.gates["base"].set()
        for job in [first] + [j for _, j in queued]:
            assert _wait_done(server, job["id"])["state"] == DONE
        assert [r.prompt for r in model.calls] == ["running", "waiting 0", "waiting 1"]


def _events(server, job_id: str, events: list[dict] | None = None) -> list[dict]:
    """The job's Server-Sent Events (appended to ``events`` as they come) until "end"."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", f"/api/jobs/{job_id}/events")
    res = conn.getresponse()
    assert res.status == 200 and res.getheader("Content-Type") == "text/event-stream"
    events = [] if events is None else events
    name = None
    for line in res:
        line = line.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and name == "status":
            events.append(json.loads(line[6:]))
        elif line.startswith("data: ") and name == "end":
            break
    conn.close()
    return events


def _wait_done(server, job_id: str) -> dict:
    events = _events(server, job_id)
    assert events[-1]["state"] in ("done", "failed")
    return events[-1]


def test_progress_stream_and_images_of_each_stage() -> None:
    model = FakeModel()
    model.gates = {"base": threading.Event(), "sr": threading.Event()}
    with running_server(model) as server:
        status, headers, raw = request(server, "POST", "/api/jobs", {"prompt": "a red square", "n": 2, "seed": 9})
        job = json.loads(raw)
        assert status == 202 and headers["location"] == f"/api/jobs/{job['id']}" == job["status_url"]
        assert job["request"] == {"prompt": "a red square", "n": 2, "seed": 9, "guidance": None,
                                  "steps": None, "stages": ["base", "sr"], "sampling": {},
                                  "negative_prompt": None, "strength": 1.0, "image": False, "mask": False}
        seen: list[dict] = []
        reader = threading.Thread(target=_events, args=(server, job["id"], seen))
        reader.start()
        def wait_until(condition) -> None:  # noqa: ANN001
            deadline = time.monotonic() + 30
            while not any(condition(e) for e in list(seen)):
                assert time.monotonic() < deadline, seen
                time.sleep(0.01)

        wait_until(lambda e: e["state"] == "running")  # streamed while the base is held
        model.gates["base"].set()
        # The base's images are published while the SR stage is still held.
        wait_until(lambda e: len(e["stages"][0]["images"]) == 2 and not e["stages"][1]["done"])
        model.gates["sr"].set()
        reader.join(30)
        states = [e["state"] for e in seen]
        assert states[-1] == "done" and "running" in states
        assert states == sorted(states, key=["queued", "running", "done"].index)  # never goes back
        versions = [e["version"] for e in seen]
        assert versions == sorted(set(versions))  # each event is a new state
        for k, name in enumerate(["base", "sr"]):
            steps = [e["stages"][k]["step"] for e in seen]
            assert steps == sorted(steps) and steps[-1] == [3, 2][k]
        final = seen[-1]
        assert final == request_json(server, "GET", job["status_url"])[1]
        for stage in final["stages"]:
            res = 16 if stage["name"] == "base" else 32
            for k, image in enumerate(stage["images"]):
                assert (image["width"], image["height"]) == (res, res)
                status, headers, png = request(server, "GET", image["url"])
                assert status == 200 and headers["content-type"] == "image/png"
                assert headers["content-disposition"].startswith("inline")
                im = Image.open(io.BytesIO(png))
                assert im.format == "PNG" and im.size == (res, res)
                assert (np.asarray(im) == fake_color(9, stage["name"], k)).all()
        status, headers, png = request(server, "GET", final["stages"][1]["images"][1]["url"] + "?download=1")
        assert headers["content-disposition"] == f'attachment; filename="pixcade-{job["id"]}-sr-1.png"'


def test_a_failing_job_is_reported_and_the_worker_carries_on() -> None:
    model = FakeModel()
    with running_server(model) as server:
        bad = request_json(server, "POST", "/api/jobs", {"prompt": "explode please"})[1]
        good = request_json(server, "POST", "/api/jobs", {"prompt": "fine"})[1]
        failed = _wait_done(server, bad["id"])
        assert failed["state"] == "failed" and failed["error"] == "internal error: RuntimeError: boom"
        assert _wait_done(server, good["id"])["state"] == "done"


def test_store_keeps_the_most_recently_used_finished_jobs() -> None:
    model = FakeModel()
    with running_server(model, keep=2) as server:
        ids = []
        for k in range(3):
            ids.append(request_json(server, "POST", "/api/jobs", {"prompt": f"p{k}"})[1]["id"])
            _wait_done(server, ids[-1])
            if k == 1:
                assert request_json(server, "GET", f"/api/jobs/{ids[0]}")[0] == 200  # touch job 0
        assert [request_json(server, "GET", f"/api/jobs/{i}")[0] for i in ids] == [200, 404, 200]
        assert server.manager.stats()["stored"] == 2


def test_finished_jobs_expire_after_the_ttl() -> None:
    now = [0.0]
    manager = JobManager(FakeModel(), max_queue=4, keep=10, ttl=60.0, clock=lambda: now[0]).start()
    try:
        changed = threading.Event()
        manager.subscribe(changed.set)
        job = manager.submit(GenerationRequest("a", stages=("base",)), {"base": StagePlan(1, "fp32")})
        while True:
            changed.clear()
            if manager.snapshot(job)["state"] == DONE:
                break
            assert changed.wait(5), "the job stopped changing before it was done"
        now[0] = 59.0
        assert manager.get(job.id) is job
        now[0] = 61.0
        assert manager.get(job.id) is None and manager.stats()["stored"] == 0
    finally:
        manager.stop()


def test_served_images_are_the_cascades_stage_by_stage(tmp_path: Path) -> None:
    from tiny_cascade import save_tiny_cascade

    from pixcade.diffusion.precision import dtype_name
    from pixcade.pipeline.cascade import Cascade
    from pixcade.serve.model import CascadeModel

    cascade = Cascade.from_pretrained(save_tiny_cascade(tmp_path / "model"))
    with running_server(CascadeModel(cascade), Limits(max_steps=3)) as server:
        status, data = request_json(server, "POST", "/api/jobs", {"prompt": "a", "stages": ["sr"]})
        assert status == 422 and "needs a start image" in data["error"]
        body = {"prompt": "two blue circles", "n": 2, "seed": 5, "guidance": {"base": 1.5}, "steps": 3}
        job = request_json(server, "POST", "/api/jobs", body)[1]
        final = _wait_done(server, job["id"])
        assert final["state"] == "done" and [s["total"] for s in final["stages"]] == [3, 3]
        # Each stage's precision as the pipeline resolves its saved dtype ("auto") on this device.
        assert [s["precision"] for s in final["stages"]] == [
            dtype_name(s.config.sampling.dtype, cascade.device) for s in cascade.stages]
        served = {s["name"]: [np.asarray(Image.open(io.BytesIO(request(server, "GET", i["url"])[2])))
                              for i in s["images"]] for s in final["stages"]}
    expected = cascade.generate("two blue circles", n=2, seed=5, guidance_weight={"base": 1.5}, steps=3,
                                return_stages=True, progress=False)
    assert list(served) == list(expected) == ["base", "sr"]
    for name in served:
        assert len(served[name]) == 2
        for got, want in zip(served[name], expected[name]):
            assert np.array_equal(got, np.asarray(want)), name


def test_each_stages_images_are_reported_before_the_next_stage_samples(tmp_path: Path) -> None:
    """The real model streams: a stage's images are handed over the moment it is done, before
    the next stage's first step, and they are the images the finished run keeps."""
    from tiny_cascade import save_tiny_cascade

    from pixcade.pipeline.cascade import Cascade
    from pixcade.serve.model import CascadeModel

    model = CascadeModel(Cascade.from_pretrained(save_tiny_cascade(tmp_path / "model")))
    events: list[tuple] = []
    model.generate(GenerationRequest("a red circle", n=2, seed=1, steps=2, stages=("base", "sr")),
                   on_progress=lambda stage, step, total: events.append(("step", stage, step, total)),
                   on_stage_done=lambda stage, images: events.append(("done", stage, len(images))))
    assert events == [("step", "base", 1, 2), ("step", "base", 2, 2), ("done", "base", 2),
                      ("step", "sr", 1, 2), ("step", "sr", 2, 2), ("done", "sr", 2)]


def test_cli_refuses_bad_settings_and_a_missing_default_model(tmp_path: Path, monkeypatch) -> None:
    from pixcade.pipeline import shipped
    from pixcade.serve.cli import main

    with pytest.raises(PixcadeError, match="max_queue must be at least 1"):
        main(["--model", str(tmp_path), "--max-queue", "0"])
    monkeypatch.setattr(shipped.resources, "files", lambda package: tmp_path)
    with pytest.raises(PixcadeError, match="shipped default model is missing.*pass --model"):
        main([])


def test_cli_serves_a_saved_cascade_until_interrupted(tmp_path: Path) -> None:
    from tiny_cascade import save_tiny_cascade

    from pixcade.serve.cli import main

    model = save_tiny_cascade(tmp_path / "model")
    with pytest.raises(PixcadeError, match="'big', not in the model"):
        main(["--model", str(model), "--stages", "big", "--port", "0"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "pixcade.cli", "serve", "--model", str(model), "--port", "0", "--stages", "base"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A suite started in the background (`nohup pytest &`) ignores SIGINT, and the child
        # would inherit that and never see the Ctrl-C this test sends: restore the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        line = proc.stdout.readline()
        assert "at http://127.0.0.1:" in line, line + proc.stderr.read()
        port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/config")
        config = json.loads(conn.getresponse().read())
        assert [(s["name"], s["allowed"]) for s in config["stages"]] == [("base", True), ("sr", False)]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    with socket.socket() as again:  # Ctrl-C freed the port: a new server can listen on it
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()


def test_a_body_without_length_is_refused() -> None:
    model = FakeModel()
    with running_server(model) as server:
        with socket.create_connection(server.server_address[:2], timeout=30) as sock:
            sock.sendall(b"POST /api/jobs HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\r\n")
            reply = b"".join(iter(lambda: sock.recv(65536), b""))
        head, _, body = reply.partition(b"\r\n\r\n")
        # uvicorn (h11) answers HTTP/1.0 requests in an HTTP/1.1 status line, as RFC 9110 allows.
        assert head.startswith(b"HTTP/1.1 411") and "Content-Length" in json.loads(body)["error"]
        assert server.manager.stats()["stored"] == 0 and not model.calls


def test_other_sites_pages_are_refused_and_leave_nothing() -> None:
    model = FakeModel()
    with running_server(model) as server:
        port = server.server_address[1]
        before = server.manager.stats()
        # DNS rebinding: the browser believes it talks to evil.example, and says so in Host.
        # (Refused by Starlette's TrustedHostMiddleware, in its words: 400, not 403 as before.)
        for method, path, body in (("GET", "/api/config", None), ("POST", "/api/jobs", {"prompt": "a"})):
            status, _, raw = request(server, method, path, body, headers={"Host": f"evil.example:{port}"})
            assert status == 400 and raw == b"Invalid host header"
        # A cross-site POST (form or fetch) to the right host carries the other site's Origin.
        status, data = request_json(server, "POST", "/api/jobs", {"prompt": "a"},
                                    headers={"Origin": "https://evil.example"})
        assert status == 403 and "cross-origin POST" in data["error"]
        _nothing_left(server, model, before)
        # The server's own page, under any loopback name, is served and may submit.
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            status, _ = request_json(server, "GET", "/api/config", headers={"Host": host})
            assert status == 200, host
        status, job = request_json(server, "POST", "/api/jobs", {"prompt": "a"},
                                   headers={"Origin": f"http://127.0.0.1:{port}"})
        assert status == 202 and job["id"]
