"""The DrawBench rating server: blind side-by-side comparisons, votes into SQLite.

Raters must not know which model made which images. The page therefore only ever sees
an opaque comparison token (random, 128 bits) and the labels "A" and "B"; the mapping
token -> (prompt, which model is A, which is B) lives in this process, the A/B order is
drawn at random per comparison, and images are served by token and label, never by
path. Each served token can be voted on once. Refused, with nothing stored: an unknown
token (404), a second vote on a token (409), a malformed request (400).
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pixcade.eval.drawbench_page import PAGE
from pixcade.eval.drawbench_votes import CHOICES, QUESTIONS, VoteStore

MAX_BODY = 4096
# Served but not yet voted comparisons kept; older ones expire (a rater who left).
MAX_OPEN = 10_000
_IMAGE_PATH = re.compile(r"^/images/([A-Za-z0-9_-]{10,64})/([AB])/(\d+)$")


@dataclass(frozen=True)
class Comparison:
    prompt_index: int
    model_a: str
    model_b: str


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

    def next_comparison(self) -> dict:
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
            self._open[token] = Comparison(prompt_index, x, y)  # x, y already in random order
            while len(self._open) > MAX_OPEN:
                self._open.popitem(last=False)
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

    def vote(self, body: object) -> tuple[HTTPStatus, dict]:
        if not isinstance(body, dict) or set(body) != {"token", *QUESTIONS}:
            return HTTPStatus.BAD_REQUEST, {"error": f"expected exactly the fields token, {', '.join(QUESTIONS)}"}
        if not isinstance(body["token"], str) or any(body[q] not in CHOICES for q in QUESTIONS):
            return HTTPStatus.BAD_REQUEST, {"error": f"answers must be one of {', '.join(CHOICES)}"}
        token = body["token"]
        with self._lock:
            if token in self._voted:
                return HTTPStatus.CONFLICT, {"error": "this comparison was already rated"}
            comp = self._open.get(token)
            if comp is None:
                return HTTPStatus.NOT_FOUND, {"error": "unknown comparison"}
            prompt = self.prompts[comp.prompt_index]
            try:
                self.store.add(token, comp.prompt_index, prompt["prompt"], prompt["category"],
                               comp.model_a, comp.model_b, body["fidelity"], body["quality"])
            except sqlite3.IntegrityError:
                return HTTPStatus.CONFLICT, {"error": "this comparison was already rated"}
            del self._open[token]
            self._voted.add(token)
        return HTTPStatus.OK, {"ok": True, "rated": self.store.count()}


class _Handler(BaseHTTPRequestHandler):
    server: "RatingServer"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        pass  # keep the terminal for the rater count, not per-request lines

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, obj: dict) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        session = self.server.session
        path = self.path.split("?", 1)[0]
        if path == "/":
            return self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
        if path == "/api/next":
            return self._json(HTTPStatus.OK, session.next_comparison())
        match = _IMAGE_PATH.match(path)
        if match:
            file = session.image(match.group(1), match.group(2), int(match.group(3)))
            if file is not None and file.is_file():
                return self._send(HTTPStatus.OK, file.read_bytes(), "image/png")
        self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if self.path != "/api/vote":
            return self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
        if not 0 < length <= MAX_BODY:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": f"body must be 1..{MAX_BODY} bytes"})
        try:
            body = json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError):
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "body is not JSON"})
        status, reply = self.server.session.vote(body)
        self._json(status, reply)


class RatingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, session: RatingSession, host: str = "127.0.0.1", port: int = 8000) -> None:
        super().__init__((host, port), _Handler)
        self.session = session

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"
