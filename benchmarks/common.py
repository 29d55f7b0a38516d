"""Shared by every implementation: identical inputs, timers and memory readings."""

from __future__ import annotations

import contextlib
import csv
import os
import resource
import time
from pathlib import Path
from typing import Callable

import torch

from specs import Suite, UNetSpec

REPO = Path(__file__).resolve().parent.parent


def make_batch(spec: UNetSpec, batch: int, suite: Suite, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Images in [-1, 1], text embeddings with prompts of varied length, low-res images for SR.

    Every implementation gets these same tensors (each converts to its own conventions).
    """
    g = torch.Generator().manual_seed(seed)
    r = spec.resolution
    images = torch.rand(batch, 3, r, r, generator=g) * 2 - 1
    emb = torch.randn(batch, suite.text_len, suite.text_dim, generator=g)
    lengths = torch.randint(max(1, suite.text_len // 2), suite.text_len + 1, (batch,), generator=g)
    mask = torch.arange(suite.text_len)[None, :] < lengths[:, None]
    out = {"images": images, "text_emb": emb * mask[..., None], "text_mask": mask}
    if spec.is_sr:
        lr = spec.lowres_resolution
        out["lowres"] = torch.nn.functional.interpolate(images, size=(lr, lr), mode="area")
    return {k: v.to(device) for k, v in out.items()}


# Dense bf16 tensor-core peak, for model FLOPs utilisation.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def gpu_peak_bf16() -> float | None:
    """The current CUDA device's dense bf16 peak FLOP/s, if it is one we know."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def autocast(device: str, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str, repeats: int = 1) -> float:
    """Seconds for ``repeats`` calls of fn (after the caller's warm-up)."""
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return time.perf_counter() - start


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def prompts(n: int) -> list[str]:
    """DrawBench prompts (the project's shared copy), repeated to n."""
    path = REPO.parent / "shared" / "drawbench.csv"
    if path.is_file():
        with open(path, newline="") as f:
            texts = [row["Prompt"] for row in csv.DictReader(f) if row.get("Prompt")]
    else:
        texts = [f"a red circle to the left of a blue square, number {i}" for i in range(50)]
    return [texts[i % len(texts)] for i in range(n)]
