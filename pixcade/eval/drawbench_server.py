"""The DrawBench rating server: blind side-by-side comparisons, votes into SQLite.

Raters must not know which model made which images. The page therefore only ever sees
an opaque comparison token (random, 128 bits) and the labels "A" and "B"; the mapping
token -> (prompt, which model is A, which is B) lives in this process, the A/B order is
drawn at random per comparison, and images are served by token and label, never by
path. Each served token can be voted on once. Refused, with nothing stored: an unknown
token (404), a second vote on a token (409), a malformed request (400), a body over
MAX_BODY bytes (413).

API: GET / (the page, rating_page/), POST /api/next -> a comparison {"token", "prompt",
"images", "questions", "choices", "rated"} (a POST: it opens state, so the guard's Origin
check keeps other sites' pages from asking), GET /images/TOKEN/A|B/K, POST /api/vote
{"token", "fidelity", "quality"}. The app runs behind `pixcade.web`'s guard, like
`pixcade serve`. Open comparisons are bounded per client address (MAX_OPEN_PER_CLIENT)
and in all (MAX_OPEN); past either bound the oldest comparison of the client holding the
most is dropped, so one client asking repeatedly can't expire another rater's.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from pixcade.eval.drawbench_votes import CHOICES, QUESTIONS, VoteStore
from pixcade.web.body import read_json
from pixcade.web.errors import RequestError
from pixcade.web.guard import guarded_app, json_response
from pixcade.web.limits import WebLimits, allowed_hosts
from pixcade.web.pages import page_routes
from pixcade.web.server import WebServer

MAX_BODY = 4096
# Served but not yet voted comparisons kept; older ones expire (a rater who left).
MAX_OPEN = 10_000
MAX_OPEN_PER_CLIENT = 64
PAGE = resources.files("pixcade.eval") / "rating_page"


@dataclass(frozen=True)
class Comparison:
    prompt_index: int
    model_a: str
    model_b: str
    client: str = ""


class RatingSession:
    """What the server knows: the generated sets (manifest), open tokens, the vote store."""

    def __init__(self, directory: str | Path, store: VoteStore, manifest: dict) -> None:
        self.root = Path(directory)
        self.store = store
        self.manifest = manifest
        self.models = {m["name"]: self.root / m["dir"] for m in manifest["models"]}
        self.prompts = manifest["prompts"]
        self.n = int(manifest["n"])
        self._open: OrderedDict[str, Comparison] = OrderedDict()
        self._open_per_client: Counter[str] = Counter()
        self._voted: set[str] = set()
        self._lock = threading.Lock()
        self._rng = secrets.SystemRandom()

    def image_path(self, model: str, prompt_index: int, k: int) -> Path:
        return self.models[model] / f"{prompt_index:04d}_{k}.png"

    def rateable(self, x: str, y: str) -> list[int]:
        return [
            p["index"] for p in self.prompts
            if all(self.image_path(m, p["index"], k).is_file() for m in (x, y) for k in range(self.n))
        ]

    def _close(self, token: str) -> None:
        """Forget an open comparison (the caller holds the lock)."""
        client = self._open.pop(token).client
        self._open_per_client[client] -= 1
        if not self._open_per_client[client]:
            del self._open_per_client[client]

    def next_comparison(self, client: str = "") -> dict:
        names = list(self.models)
        x, y = self._rng.sample(names, 2)
        candidates = self.rateable(x, y)
        if not candidates:
            return {"done": True, "message": "no prompt has images from both models"}
        # Least-rated prompts first, so votes spread over the whole benchmark.
        counts = self.store.counts_per_prompt(x, y)
        fewest = min(counts.get(i, 0) for i in candidates)
        prompt_index = self._rng.choice([i for i in candidates if counts.get(i, 0) == fewest])
        token = secrets.token_urlsafe(16)
        with self._lock:
            if self._open_per_client[client] >= MAX_OPEN_PER_CLIENT:
                self._close(next(t for t, c in self._open.items() if c.client == client))
            self._open[token] = Comparison(prompt_index, x, y, client)  # x, y already in random order
            self._open_per_client[client] += 1
            while len(self._open) > MAX_OPEN:  # the oldest of whoever holds the most
                busiest = max(self._open_per_client, key=self._open_per_client.__getitem__)
                self._close(next(t for t, c in self._open.items() if c.client == busiest))
        prompt = self.prompts[prompt_index]["prompt"]
        return {
            "token": token,
            "prompt": prompt,
            "images": {side: [f"/images/{token}/{side}/{k}" for k in range(self.n)] for side in "AB"},
            "questions": QUESTIONS,
            "choices": list(CHOICES),
            "rated": self.store.count(),
        }

    def image(self, token: str, side: str, k: int) -> Path | None:
        with self._lock:
            comp = self._open.get(token)
        if comp is None or k >= self.n:
            return None
        return self.image_path(comp.model_a if side == "A" else comp.model_b, comp.prompt_index, k)

    def vote(self, body: object) -> dict:
        if not isinstance(body, dict) or set(body) != {"token", *QUESTIONS}:
            raise RequestError(400, f"expected exactly the fields token, {', '.join(QUESTIONS)}")
        if not isinstance(body["token"], str) or any(body[q] not in CHOICES for q in QUESTIONS):
            raise RequestError(400, f"answers must be one of {', '.join(CHOICES)}")
        token = body["token"]
        with self._lock:
            if token in self._voted:
                raise RequestError(409, "this comparison was already rated")
            comp = self._open.get(token)
            if comp is None:
                raise RequestError(404, "unknown comparison")
            prompt = self.prompts[comp.prompt_index]
            try:
                self.store.add(token, comp.prompt_index, prompt["prompt"], prompt["category"],
                               comp.model_a, comp.model_b, body["fidelity"], body["quality"])
            except sqlite3.IntegrityError:
                raise RequestError(409, "this comparison was already rated") from None
            self._close(token)
            self._voted.add(token)
        return {"ok": True, "rated": self.store.count()}


class RatingApi:
    """The routes over one rating session (sqlite and file reads run in Starlette's threads)."""

    def __init__(self, session: RatingSession, web: WebLimits) -> None:
        self.session, self.web = session, web

    def routes(self) -> list:
        return [
            *page_routes(PAGE),
            Route("/api/next", self.next, methods=["POST"]),
            Route("/images/{token}/{side}/{k:int}", self.image),
            Route("/api/vote", self.vote, methods=["POST"]),
        ]

    async def next(self, request: Request) -> Response:
        client = request.client.host if request.client else ""
        comparison = await run_in_threadpool(self.session.next_comparison, client)
        return json_response(comparison)

    async def image(self, request: Request) -> Response:
        p = request.path_params
        file = self.session.image(p["token"], p["side"], p["k"]) if p["side"] in ("A", "B") else None
        if file is None or not file.is_file():
            raise RequestError(404, "no such image (unknown or already rated comparison)")
        return FileResponse(str(file), media_type="image/png", headers={"Cache-Control": "no-store"})

    async def vote(self, request: Request) -> Response:
        body = await read_json(request, MAX_BODY, self.web)
        reply = await run_in_threadpool(self.session.vote, body)
        return json_response(reply)


class RatingServer(WebServer):
    """The rating app on a bound socket (see `WebServer`), behind the shared guard;
    ``hosts``: Host names to answer besides the loopback ones (`allowed_hosts`)."""

    def __init__(self, session: RatingSession, host: str = "127.0.0.1", port: int = 8000,
                 hosts: Sequence[str] = (), web: WebLimits | None = None) -> None:
        web = web or WebLimits()
        self.session = session
        self.hosts = allowed_hosts(host, hosts)
        super().__init__(guarded_app(RatingApi(session, web).routes(), self.hosts, web), host, port, web)

    @property
    def url(self) -> str:
        return super().url + "/"
