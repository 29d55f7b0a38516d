"""Jobs: a bounded queue, one worker thread that owns the model, a bounded store of results.

Memory stays flat whatever the traffic: at most ``max_queue`` jobs wait, one runs, and
finished jobs are kept (their stage images as PNG bytes) only up to ``keep`` of them and
for at most ``ttl`` seconds, least recently looked-at evicted first. A job that waits or
runs is never evicted. Every change to a job bumps its version and wakes the waiters:
threads blocked in `wait`, and the callbacks given to `subscribe` (how the server's event
loop learns of changes without a thread per event stream).

Stopping (`stop`) takes no more work; with ``cancel`` the running job ends at its next
sampling step and queued jobs end too, each as failed with the reason, so Ctrl-C on the
server never waits for a whole job.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from PIL import Image

from pixcade.errors import PixcadeError
from pixcade.serve.model import Model, StagePlan
from pixcade.serve.requests import GenerationRequest

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
TERMINAL = (DONE, FAILED)
CANCELLED = "cancelled: the server is shutting down"


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already; the request was not taken."""


class JobCancelled(PixcadeError):
    """Raised inside the model's progress callback to end the running job early."""


@dataclass
class StageState:
    name: str
    total: int
    precision: str
    step: int = 0
    done: bool = False
    images: list[bytes] = field(default_factory=list)  # PNG files
    sizes: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Job:
    id: str
    request: GenerationRequest
    stages: dict[str, StageState]
    created: float
    state: str = QUEUED
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    version: int = 0

    @property
    def stored_bytes(self) -> int:
        return sum(len(b) for s in self.stages.values() for b in s.images)


class JobManager:
    """Owns the model: only its worker thread calls ``model.generate``."""

    def __init__(
        self, model: Model, max_queue: int = 8, keep: int = 64, ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_queue < 1 or keep < 1 or ttl <= 0:
            raise PixcadeError("max_queue and keep must be >= 1 and ttl > 0")
        self.model = model
        self.max_queue, self.keep, self.ttl = max_queue, keep, ttl
        self.clock = clock
        self._queue: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # all known jobs, LRU order
        self._cond = threading.Condition()
        self._stopping = False
        self._cancel = False
        self._watchers: list[Callable[[], None]] = []
        self._worker: threading.Thread | None = None
        self.completed = 0  # jobs that reached a terminal state, ever

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> "JobManager":
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="pixcade-serve-worker", daemon=True)
            self._worker.start()
        return self

    def stop(self, timeout: float | None = 10.0, cancel: bool = False) -> None:
        """Stop taking work and wake every waiter; wait up to ``timeout`` for the worker (None:
        don't wait). The running job finishes first, or with ``cancel`` ends at its next step,
        and the queued ones are failed as cancelled."""
        with self._cond:
            self._stopping = True
            if cancel:
                self._cancel = True
                while self._queue:
                    self._finish(self._queue.popleft(), {"state": FAILED, "error": CANCELLED})
            self._changed()
        if self._worker is not None and timeout is not None:
            self._worker.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping

    # -- submitting and reading -------------------------------------------------------

    def submit(self, request: GenerationRequest, plans: dict[str, StagePlan]) -> Job:
        """Queue a checked request (``plans``: what each stage will run, from ``model.check``).
        Raises QueueFull."""
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            self._evict()
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} jobs waiting); try again later")
            job = Job(
                id=secrets.token_urlsafe(12), request=request, created=self.clock(),
                stages={name: StageState(name, p.steps, p.precision) for name, p in plans.items()},
            )
            self._jobs[job.id] = job
            self._queue.append(job)
            self._changed()
            return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            self._evict()
            job = self._jobs.get(job_id)
            if job is not None:
                self._jobs.move_to_end(job_id)
            return job

    def snapshot(self, job: Job) -> dict[str, Any]:
        """The job's status as JSON-ready data (read under the lock: consistent)."""
        with self._cond:
            position = next((k + 1 for k, j in enumerate(self._queue) if j is job), 0)
            return {
                "id": job.id, "state": job.state, "queue_position": position,
                "request": job.request.to_json(), "error": job.error, "version": job.version,
                "stages": [
                    {
                        "name": s.name, "step": s.step, "total": s.total, "precision": s.precision,
                        "done": s.done,
                        "images": [
                            {"url": f"/api/jobs/{job.id}/images/{s.name}/{k}.png",
                             "width": w, "height": h}
                            for k, (w, h) in enumerate(s.sizes)
                        ],
                    }
                    for s in job.stages.values()
                ],
            }

    def image(self, job: Job, stage: str, index: int) -> bytes | None:
        with self._cond:
            s = job.stages.get(stage)
            if s is None or not 0 <= index < len(s.images):
                return None
            return s.images[index]

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake()`` (from whichever thread made the change, under the manager's lock:
        it must only schedule work) after every change; returns the unsubscribe function."""
        with self._cond:
            self._watchers.append(wake)
        return lambda: self._unsubscribe(wake)

    def _unsubscribe(self, wake: Callable[[], None]) -> None:
        with self._cond:
            self._watchers.remove(wake)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            self._evict()
            finished = [j for j in self._jobs.values() if j.state in TERMINAL]
            return {
                "queued": len(self._queue),
                "running": sum(j.state == RUNNING for j in self._jobs.values()),
                "stored": len(self._jobs), "finished_stored": len(finished),
                "stored_bytes": sum(j.stored_bytes for j in self._jobs.values()),
                "completed": self.completed, "max_queue": self.max_queue, "keep": self.keep,
            }

    # -- internals ----------------------------------------------------------------------

    def _evict(self) -> None:
        """Drop finished jobs past the TTL, then the least recently used past ``keep``."""
        now = self.clock()
        finished = [j for j in self._jobs.values() if j.state in TERMINAL]
        for j in finished:
            if j.finished is not None and now - j.finished > self.ttl:
                del self._jobs[j.id]
        finished = [j for j in self._jobs.values() if j.state in TERMINAL]
        for j in finished[: max(0, len(finished) - self.keep)]:
            del self._jobs[j.id]

    def _changed(self) -> None:
        """Wake everyone waiting for a change (the caller holds the lock)."""
        self._cond.notify_all()
        for wake in self._watchers:
            wake()

    def _finish(self, job: Job, outcome: dict[str, Any]) -> None:
        """Put a job in its terminal state (the caller holds the lock and calls `_changed`)."""
        for k, v in outcome.items():
            setattr(job, k, v)
        job.finished = self.clock()
        job.version += 1
        self.completed += 1
        self._jobs.move_to_end(job.id)  # just finished = most recently used

    def _on_progress(self, job: Job, stage: str, step: int, total: int) -> None:
        with self._cond:
            if self._cancel:
                raise JobCancelled(CANCELLED)
            s = job.stages[stage]
            s.step, s.total = step, total
            job.version += 1
            self._changed()

    def _on_stage_done(self, job: Job, stage: str, images: list[Image.Image]) -> None:
        from pixcade.pipeline.images import png_bytes  # here: the pipeline loads torch

        files = [png_bytes(im) for im in images]  # encoded outside the lock
        with self._cond:
            s = job.stages[stage]
            s.images, s.sizes, s.done, s.step = files, [im.size for im in images], True, s.total
            job.version += 1
            self._changed()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._queue.popleft()
                job.state, job.started = RUNNING, self.clock()
                job.version += 1
                self._changed()
            try:
                self.model.generate(
                    job.request,
                    lambda stage, step, total: self._on_progress(job, stage, step, total),
                    lambda stage, images: self._on_stage_done(job, stage, images),
                )
                missing = [s.name for s in job.stages.values() if not s.done]
                if missing:
                    raise RuntimeError(f"the model returned without finishing stage(s) {', '.join(missing)}")
                outcome: dict[str, Any] = {"state": DONE}
            except PixcadeError as err:
                outcome = {"state": FAILED, "error": str(err)}
            except Exception as err:  # a bug must fail this job, not kill the only worker
                log.exception("job %s failed", job.id)
                outcome = {"state": FAILED, "error": f"internal error: {type(err).__name__}: {err}"}
            with self._cond:
                self._finish(job, outcome)
                self._evict()
                self._changed()
