"""A small load test on loopback: concurrent clients against a bounded queue.

12 client threads each send 3 requests (36 in all; every sixth one over the prompt limit).
The first wave arrives together while the model is held, so the queue must fill and refuse;
afterwards requests flow. Every accepted job must finish with its images downloadable,
every refused request must get a JSON reason (503 queue full, 422 limit), the queue and the
job store must stay within their bounds the whole time, and the process's memory must not
grow from one round of load to the next. The whole test runs under a deadline.
"""

from __future__ import annotations

import io
import json
import threading
import time

from PIL import Image
from serve_support import FakeModel, fake_color, request, running_server

from pixcade.serve.requests import Limits

CLIENTS, ROUNDS = 12, 3
LIMITS = Limits(max_queue=4, max_prompt_chars=60)
# A finished job can only be evicted by KEEP newer finished ones; one round has at most
# CLIENTS * ROUNDS jobs, so each client can still read its own, and the store (holding
# several rounds' worth of finished jobs) must evict across rounds.
KEEP = CLIENTS * ROUNDS
DEADLINE_S = 120.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _follow(server, job_id: str) -> dict:
    """Poll the job until it ends (the page's fallback path; SSE is tested elsewhere)."""
    while True:
        status, _, raw = request(server, "GET", f"/api/jobs/{job_id}")
        assert status == 200, raw
        job = json.loads(raw)
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.01)


def _load(server, model: FakeModel, first_wave_gate: threading.Event | None) -> dict[str, list]:
    results: dict[str, list] = {"done": [], "refused": [], "invalid": [], "errors": []}
    lock = threading.Lock()
    answered = threading.Barrier(CLIENTS + 1)
    start = threading.Barrier(CLIENTS)

    def client(c: int) -> None:
        try:
            start.wait(30)
            for r in range(ROUNDS):
                k = c * ROUNDS + r
                prompt = "x" * 61 if k % 6 == 5 else f"client {c} request {r}"
                status, headers, raw = request(server, "POST", "/api/jobs", {"prompt": prompt, "seed": k})
                if r == 0:
                    answered.wait(30)  # the whole first wave has been answered
                body = json.loads(raw)
                if status == 202:
                    job = _follow(server, body["id"])
                    assert job["state"] == "done", job
                    url = job["stages"][1]["images"][0]["url"]
                    status, _, png = request(server, "GET", url)
                    assert status == 200, png
                    pixel = Image.open(io.BytesIO(png)).getpixel((5, 5))
                    assert pixel == fake_color(k, "sr", 0)
                    with lock:
                        results["done"].append(k)
                elif status == 503:
                    assert "queue is full" in body["error"] and headers["retry-after"], body
                    with lock:
                        results["refused"].append(k)
                else:
                    assert status == 422 and body["limit"] == "max_prompt_chars", (status, body)
                    with lock:
                        results["invalid"].append(k)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            with lock:
                results["errors"].append(f"client {c}: {err!r}")

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    answered.wait(DEADLINE_S)
    if first_wave_gate is not None:
        first_wave_gate.set()
    deadline = time.monotonic() + DEADLINE_S
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "clients still waiting at the deadline"
    return results


def test_concurrent_clients_bounded_queue_flat_memory() -> None:
    model = FakeModel()
    gate = threading.Event()
    model.gates["base"] = gate
    with running_server(model, LIMITS, keep=KEEP) as server:
        assert server.server_address[0] == "127.0.0.1"
        peaks = {"queued": 0, "stored": 0, "stored_bytes": 0}
        stop = threading.Event()

        def monitor() -> None:
            while not stop.is_set():
                stats = server.manager.stats()
                for key in peaks:
                    peaks[key] = max(peaks[key], stats[key])
                time.sleep(0.002)

        watcher = threading.Thread(target=monitor, daemon=True)
        watcher.start()
        rounds, rss = [], []
        for n in range(3):
            rounds.append(_load(server, model, gate if n == 0 else None))
            rss.append(rss_bytes())
        stop.set()
        watcher.join(10)

        total = CLIENTS * ROUNDS
        for res in rounds:
            assert not res["errors"], res["errors"]
            assert len(res["done"]) + len(res["refused"]) + len(res["invalid"]) == total
            assert len(res["invalid"]) == total // 6
        # The first wave met a held model: one job running, max_queue waiting, the rest refused.
        assert len(rounds[0]["refused"]) >= CLIENTS - LIMITS.max_queue - 1
        accepted = sum(len(r["done"]) for r in rounds)
        stats = server.manager.stats()
        assert stats["completed"] == accepted == len(model.calls)
        assert (stats["queued"], stats["running"]) == (0, 0)

        # Bounded all along: the queue, and the store (kept + waiting + running).
        assert peaks["queued"] <= LIMITS.max_queue
        assert peaks["stored"] <= KEEP + LIMITS.max_queue + 1
        assert accepted > KEEP and stats["stored"] == KEEP  # eviction was exercised
        per_job = max(j.stored_bytes for j in list(server.manager._jobs.values()))
        assert peaks["stored_bytes"] <= (KEEP + 1) * per_job
        # Memory after the second and third rounds of the same load: no growth to speak of.
        assert rss[2] - rss[1] < 16 * 2**20, f"RSS grew {rss[2] - rss[1]} bytes between identical rounds"
