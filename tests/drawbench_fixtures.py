"""Shared by the DrawBench tests: a generated-looking run folder and a live rating server."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from pixcade.eval.drawbench_server import RatingServer, RatingSession
from pixcade.eval.drawbench_votes import VoteStore
from pixcade.web.limits import WebLimits

MODELS = ["runs/alpha-model", "runs/beta-model"]
PROMPTS = [
    {"index": 0, "prompt": "A red colored car.", "category": "Colors"},
    {"index": 1, "prompt": "Three cats.", "category": "Counting"},
    {"index": 2, "prompt": "A blue cube.", "category": "Colors"},
]
N = 2


def make_run(directory: Path) -> Path:
    """Tiny PNGs laid out as `pixcade drawbench generate` writes them; each model its own colour."""
    manifest = {"n": N, "seed": 0, "prompts": PROMPTS,
                "models": [{"name": m, "dir": f"model-{i}"} for i, m in enumerate(MODELS)]}
    rng = np.random.default_rng(0)
    for i, _ in enumerate(MODELS):
        folder = directory / f"model-{i}"
        folder.mkdir(parents=True)
        for p in PROMPTS:
            for k in range(N):
                arr = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
                arr[..., i] += 180  # model 0 reddish, model 1 greenish
                Image.fromarray(arr).save(folder / f"{p['index']:04d}_{k}.png")
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


class LiveServer:
    def __init__(self, directory: Path, web: WebLimits | None = None) -> None:
        self.store = VoteStore(directory / "votes.sqlite")
        self.session = RatingSession(directory, self.store, json.loads((directory / "manifest.json").read_text()))
        self.server = RatingServer(self.session, "127.0.0.1", 0, web=web)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        self.server.close()
        self.thread.join(10)
