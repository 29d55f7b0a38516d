"""Matched U-Net specs: one neutral description, translated into each implementation's knobs.

A spec fixes what a user would call "the same model": resolution, base width, per-level
channel multipliers, ResNet blocks per level, which levels self-attend and which
cross-attend to the text, attention head width, and the text length and width. Each
implementation keeps its own defaults for everything else (that is what its users get).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class UNetSpec:
    resolution: int
    channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: tuple[int, ...]
    attn_levels: tuple[int, ...]
    cross_attn_levels: tuple[int, ...]
    head_dim: int
    lowres_resolution: int | None = None  # set for a super-resolution U-Net

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.channels * m for m in self.channel_mult)

    @property
    def is_sr(self) -> bool:
        return self.lowres_resolution is not None


@dataclass(frozen=True)
class Suite:
    """Everything one run measures: a base and an SR U-Net, batch sizes, text shape."""

    name: str
    base: UNetSpec
    sr: UNetSpec
    text_len: int
    text_dim: int
    train_batch: int
    sr_train_batch: int
    sample_batch: int
    train_steps: int  # timed optimizer steps (after one warm-up step)
    sample_steps: int  # denoising steps actually run per stage; longer schedules are extrapolated
    text_prompts: int

    def describe(self) -> dict:
        return dataclasses.asdict(self)

    def with_batch(self, n: int | None) -> "Suite":
        """Every batch size set to n: a big suite's models on a small machine (a first look)."""
        if n is None:
            return self
        if n < 1:
            raise ValueError(f"batch must be >= 1, got {n}")
        return dataclasses.replace(self, train_batch=n, sr_train_batch=n, sample_batch=n)


# MiniLM's width, the project's default text encoder; CPU rows use it, GPU rows use T5-XXL's.
MINILM_DIM = 384
T5_XXL_DIM = 4096

SUITES: dict[str, Suite] = {
    # For the smoke test: seconds, pixcade only.
    "micro": Suite(
        name="micro",
        base=UNetSpec(16, 32, (1, 2), (1, 1), (1,), (1,), 32),
        sr=UNetSpec(32, 32, (1, 2), (1, 1), (), (1,), 32, lowres_resolution=16),
        text_len=8, text_dim=64, train_batch=2, sr_train_batch=2, sample_batch=1,
        train_steps=1, sample_steps=2, text_prompts=8,
    ),
    # 2 CPU cores, a few minutes for the whole table (the shapes-model scale: 32 px -> 64 px).
    "cpu": Suite(
        name="cpu",
        base=UNetSpec(32, 64, (1, 2, 3, 4), (1, 2, 2, 2), (2, 3), (1, 2, 3), 32),
        sr=UNetSpec(64, 32, (1, 2, 4, 8), (1, 2, 3, 3), (), (2, 3), 32, lowres_resolution=32),
        text_len=16, text_dim=MINILM_DIM, train_batch=8, sr_train_batch=4, sample_batch=2,
        train_steps=3, sample_steps=3, text_prompts=64,
    ),
    # One H100/H200: paper-like layouts at a width that fits three implementations in one run.
    "gpu": Suite(
        name="gpu",
        base=UNetSpec(64, 256, (1, 2, 3, 4), (3, 3, 3, 3), (1, 2, 3), (1, 2, 3), 64),
        sr=UNetSpec(256, 128, (1, 2, 4, 8), (2, 2, 4, 4), (3,), (3,), 64, lowres_resolution=64),
        text_len=128, text_dim=T5_XXL_DIM, train_batch=64, sr_train_batch=16, sample_batch=16,
        train_steps=10, sample_steps=10, text_prompts=512,
    ),
}
