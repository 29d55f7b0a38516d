"""A super-resolution stage started from its noised upsampled input (`SamplingSettings.start`):
the grid, the data distribution with an analytic denoiser, the stage wiring and the checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from diffusion_theory import gaussian_denoiser, moments, rel_err, whitened_noise
from pixcade.diffusion.editing import noise_to
from pixcade.diffusion.samplers import SAMPLERS, SPACINGS, generator_noise, sample
from pixcade.diffusion.schedules import get_schedule
from pixcade.diffusion.settings import SamplingSettings
from pixcade.errors import PixcadeError
from pixcade.stage import Stage, upsample
from tiny_cascade import BASE_RES, SR_RES, build_tiny_cascade

F64 = torch.float64
MEAN = torch.tensor([0.3, -0.5], dtype=F64)
COV = torch.tensor([[1.0, 0.4], [0.4, 0.5]], dtype=F64)
STEPS = {"dpm++": 20, "ddim": 50, "ddpm": 200}


@pytest.mark.parametrize("spacing", list(SPACINGS))
@pytest.mark.parametrize("t_max", [1.0, 0.3, 0.05])
def test_a_grid_up_to_t_max_spends_every_step_below_it(spacing, t_max):
    ts = SPACINGS[spacing](get_schedule("cosine"), 6, t_max)
    assert ts.shape == (7,) and ts[0].item() == t_max and ts[-1].item() == 0.0
    assert bool((ts[1:] < ts[:-1]).all())
    if t_max == 1.0:  # the full grid is the one every saved model samples on
        assert torch.equal(ts, SPACINGS[spacing](get_schedule("cosine"), 6))


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_starting_from_noised_data_returns_the_data_distribution(sampler):
    """z = alpha x + sigma eps with x from the data is a sample of the marginal at t_max, so
    the exact denoiser run from there over [0, t_max] gives the data distribution back."""
    schedule = get_schedule("cosine")
    data = MEAN + whitened_noise(12000, 2, 0).flatten(1) @ torch.linalg.cholesky(COV).T
    noise = whitened_noise(12000, 2, 1)
    calls = []
    out = sample(gaussian_denoiser(MEAN, COV, schedule), schedule,
                 noise_to(data.view(-1, 2, 1, 1), noise, schedule, 0.4), sampler, steps=STEPS[sampler],
                 t_max=0.4, noise_sampler=generator_noise(noise, torch.Generator().manual_seed(2)),
                 callback=lambda i, n, x: calls.append(n))
    assert len(calls) == STEPS[sampler]  # every step is spent below t_max
    mean, cov = moments(out)
    assert (mean - MEAN).norm() < 0.03 and rel_err(cov, COV) < 0.06


def sr_stage(**changes) -> Stage:
    stage = build_tiny_cascade(seed=0).stage("sr")
    stage.config = dataclasses.replace(stage.config, sampling=stage.config.sampling.replace(**changes))
    return stage


def inputs(b: int = 2):
    g = torch.Generator().manual_seed(0)
    emb, mask = torch.randn(b, 5, 384, generator=g), torch.ones(b, 5, dtype=torch.bool)
    lowres = torch.rand(b, 3, BASE_RES, BASE_RES, generator=g) * 2 - 1
    noise = torch.randn(b, 3, SR_RES, SR_RES, generator=g)
    return emb, mask, lowres, noise


def test_a_stage_started_near_zero_returns_its_upsampled_input_whatever_its_network():
    """At t -> 0, z_t is the input itself and the x0 any network implies (eps: (z - sigma eps)
    / alpha; v: alpha z - sigma v) is z: the output is the bicubic upsample of the input."""
    emb, mask, lowres, noise = inputs()
    stage = sr_stage(start=1e-4, steps=1, sampler="ddim", threshold="none", dtype="fp32", guidance_weight=1.0)
    out = stage.sample(emb, mask, lowres, noise=noise)
    torch.testing.assert_close(out, upsample(lowres, SR_RES), atol=2e-3, rtol=0)


def test_the_first_call_sees_the_noised_upsampled_input_at_start_and_steps_are_calls():
    emb, mask, lowres, noise = inputs()
    stage = sr_stage(start=0.3, steps=3, sampler="dpm++", dtype="fp32", guidance_weight=1.0)
    seen = []
    net = stage.net
    stage.net = lambda z, t, **kw: (seen.append((z.clone(), t.clone())), net(z, t, **kw))[1]
    stage.sample(emb, mask, lowres, noise=noise)
    assert len(seen) == 3 and torch.allclose(seen[0][1], torch.full((2,), 0.3))
    want = noise_to(upsample(lowres, SR_RES), noise, stage.schedule, 0.3)
    torch.testing.assert_close(seen[0][0], want)
    assert all(float(t[0]) < 0.3 for _, t in seen[1:])


def test_start_is_checked_and_only_a_super_resolution_stage_takes_one():
    for bad in (0.0, 1.5, -0.2, float("nan"), True, "0.5"):
        with pytest.raises(PixcadeError, match="start"):
            SamplingSettings(start=bad)
    base = build_tiny_cascade(seed=0).stage("base")
    with pytest.raises(PixcadeError, match="not a super-resolution stage: it has no input to start from"):
        base.config.check_sampling(base.config.sampling.replace(start=0.5))
    assert SamplingSettings.from_dict(SamplingSettings(start=0.2).to_dict()).start == 0.2
    assert SamplingSettings().replace_text({"start": "0.25"}).start == 0.25
