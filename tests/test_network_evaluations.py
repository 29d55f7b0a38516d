"""StageConfig.network_evaluations counts the U-Net passes a sample really makes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pixcade.stage import Stage
from pixcade.train.config import DistillConfig
from pixcade.train.distill import student_config
from tiny_cascade import tiny_configs

B = 3


def counted_passes(stage: Stage, settings) -> float:
    """U-Net evaluations per image: rows through the network / batch."""
    rows = 0

    def hook(module, args, kwargs):
        nonlocal rows
        rows += args[0].shape[0]

    handle = stage.net.register_forward_pre_hook(hook, with_kwargs=True)
    c = stage.config
    emb, mask = torch.randn(B, 5, c.unet.text_dim), torch.ones(B, 5, dtype=torch.bool)
    lowres = torch.rand(B, 3, c.lowres_resolution, c.lowres_resolution) * 2 - 1 if c.is_super_resolution else None
    try:
        stage.sample(emb, mask, lowres, settings=settings, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    return rows / B


@pytest.mark.parametrize("sampler", ["ddim", "dpm++", "ddpm"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("weight", [1.0, 3.0])
def test_plain_stage_one_pass_per_step_two_under_guidance(sampler, steps, weight):
    for config in tiny_configs():
        stage = Stage(config)
        s = config.sampling.replace(sampler=sampler, steps=steps, guidance_weight=weight)
        expected = steps * (1 if weight == 1.0 else 2)
        assert config.network_evaluations(s) == expected
        assert counted_passes(stage, s) == expected


def test_guidance_conditioned_stage_runs_one_pass_at_any_weight():
    base = student_config(tiny_configs()[0], DistillConfig(teacher="-", phase="guided"))
    stage = Stage(base)
    for weight in (1.0, 5.0):
        s = base.sampling.replace(steps=4, guidance_weight=weight)
        assert base.network_evaluations(s) == counted_passes(stage, s) == 4


def test_default_is_the_saved_settings():
    base = tiny_configs(steps=3)[0]  # guided (weight 3), 3 steps
    assert base.network_evaluations() == 6
    unguided = dataclasses.replace(base, sampling=base.sampling.replace(guidance_weight=1.0))
    assert unguided.network_evaluations() == 3
