"""A tiny random two-stage cascade (16 px base -> 32 px SR, MiniLM text) for the pipeline tests."""

from __future__ import annotations

from pathlib import Path

import torch

from pixcade.diffusion.settings import SamplingSettings
from pixcade.nn.configs import get_preset
from pixcade.pipeline.cascade import Cascade
from pixcade.stage import Stage, StageConfig
from random_weights import perturb

MINILM_DIM = 384
BASE_RES, SR_RES = 16, 32


def tiny_configs(steps: int = 2) -> list[StageConfig]:
    base = StageConfig(
        name="base", resolution=BASE_RES, unet=get_preset("tiny-base", text_dim=MINILM_DIM),
        sampling=SamplingSettings(sampler="ddim", steps=steps, guidance_weight=3.0, threshold="dynamic:99.5"),
    )
    sr = StageConfig(
        name="sr", resolution=SR_RES, lowres_resolution=BASE_RES,
        unet=get_preset("tiny-sr", text_dim=MINILM_DIM),
        sampling=SamplingSettings(sampler="dpm++", steps=steps, guidance_weight=2.0, threshold="static",
                                  aug_level=0.2),
    )
    return [base, sr]


def build_tiny_cascade(seed: int = 0, steps: int = 2) -> Cascade:
    """Random weights, with the zero-initialised output conv randomised too, so each
    network's output really depends on the noise, the text and the low-res image."""
    torch.manual_seed(seed)
    stages = []
    for config in tiny_configs(steps):
        stage = Stage(config)
        perturb(stage.net)
        stages.append(stage)
    return Cascade(stages, text_encoder="minilm", max_length=32)


def save_tiny_cascade(directory: Path, seed: int = 0) -> Path:
    build_tiny_cascade(seed).save_pretrained(directory)
    return directory
