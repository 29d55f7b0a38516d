"""Editing (SDEdit, inpainting) and half-precision sampling against exact expectations on
data with an analytic denoiser (tests/diffusion_theory.py)."""

from __future__ import annotations

import pytest
import torch

from diffusion_theory import gaussian_denoiser, in_precision, moments, rel_err, whitened_noise
from pixcade.diffusion.editing import (
    feather,
    inpainting_denoiser,
    keep_known,
    noise_to,
    sdedit_start,
)
from pixcade.diffusion.samplers import SAMPLERS, generator_noise, sample, start_at, uniform_t
from pixcade.diffusion.schedules import alpha_sigma, get_schedule
from pixcade.errors import PixcadeError

F64 = torch.float64
MEAN = torch.tensor([0.3, -0.5], dtype=F64)
COV = torch.tensor([[1.0, 0.4], [0.4, 0.5]], dtype=F64)
STEPS = {"dpm++": 20, "ddim": 50, "ddpm": 200}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_strength_one_is_plain_generation(sampler):
    schedule = get_schedule("cosine")
    den = gaussian_denoiser(MEAN, COV, schedule)
    noise = torch.randn(64, 2, 1, 1, generator=_gen(0), dtype=F64)
    image = torch.randn(64, 2, 1, 1, generator=_gen(1), dtype=F64)
    z = sdedit_start(image, noise, schedule, 1.0)
    assert z is noise
    plain = sample(den, schedule, noise, sampler, steps=STEPS[sampler],
                   noise_sampler=generator_noise(noise, _gen(2)))
    edited = sample(den, schedule, z, sampler, steps=STEPS[sampler], t_start=1.0,
                    noise_sampler=generator_noise(noise, _gen(2)))
    assert torch.equal(plain, edited)


def test_a_run_from_t_start_is_the_tail_of_its_grid_and_bad_strengths_are_named():
    ts = uniform_t(get_schedule("cosine"), 10)
    assert torch.equal(start_at(ts, 1.0), ts)
    assert torch.allclose(start_at(ts, 0.55), torch.tensor([0.55, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0], dtype=F64))
    assert torch.allclose(start_at(ts, 0.01), torch.tensor([0.01, 0.0], dtype=F64))  # one call
    x = torch.zeros(1, 3, 4, 4)
    for bad in (-0.1, 1.5, float("nan"), "0.5", True):
        with pytest.raises(PixcadeError, match="strength must be a number in \\[0, 1\\]"):
            sdedit_start(x, x, get_schedule("cosine"), bad)
    with pytest.raises(PixcadeError, match="strength 0"):
        sdedit_start(x, x, get_schedule("cosine"), 0.0)


def test_noise_to_is_the_forward_process():
    schedule = get_schedule("cosine")
    x, e = torch.randn(3, 3, 4, 4, generator=_gen(0)), torch.randn(3, 3, 4, 4, generator=_gen(1))
    t = torch.tensor([0.1, 0.5, 0.9])
    a, s = alpha_sigma(schedule.log_snr(t.double()))
    want = a.float().view(-1, 1, 1, 1) * x + s.float().view(-1, 1, 1, 1) * e
    torch.testing.assert_close(noise_to(x, e, schedule, t), want)
    torch.testing.assert_close(noise_to(x, e, schedule, 0.5), noise_to(x, e, schedule, torch.full((3,), 0.5)))


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("strength", [0.3, 0.7])
def test_sdedit_of_a_data_sample_keeps_the_data_distribution(sampler, strength):
    """Noising a sample of the data to t gives a sample of the marginal at t, so sampling
    from there with the exact denoiser returns the data distribution: SDEdit of data is
    data (its moments to the samplers' own tolerances)."""
    schedule = get_schedule("cosine")
    chol = torch.linalg.cholesky(COV)
    data = MEAN + whitened_noise(12000, 2, 0).flatten(1) @ chol.T
    noise = whitened_noise(12000, 2, 1)
    z = sdedit_start(data.view(-1, 2, 1, 1), noise, schedule, strength)
    out = sample(gaussian_denoiser(MEAN, COV, schedule), schedule, z, sampler,
                 steps=STEPS[sampler], t_start=strength,
                 noise_sampler=generator_noise(noise, _gen(2)))
    mean, cov = moments(out)
    assert (mean - MEAN).norm() < 0.03
    assert rel_err(cov, COV) < 0.06
    moved = (out.flatten(1) - data).norm(dim=1).mean()
    assert moved > 0.1


def test_sdedit_moves_less_at_lower_strength():
    schedule = get_schedule("cosine")
    den = gaussian_denoiser(MEAN, COV, schedule)
    data = (MEAN + torch.randn(2000, 2, generator=_gen(0), dtype=F64) @ torch.linalg.cholesky(COV).T).view(-1, 2, 1, 1)
    noise = torch.randn(2000, 2, 1, 1, generator=_gen(1), dtype=F64)
    moved = []
    for s in (0.1, 0.4, 0.8):
        out = sample(den, schedule, sdedit_start(data, noise, schedule, s), "dpm++",
                     steps=20, t_start=s)
        moved.append((out - data).flatten(1).norm(dim=1).mean().item())
    assert moved[0] < moved[1] < moved[2]


# Inpainting on pixels: the data is a 1 x 2 "image" of one channel whose two pixels are
# correlated; the mask keeps the left pixel and redraws the right one.
ICOV = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=F64)
KNOWN_VALUE = 1.0


def _inpaint(sampler, steps, n=4000, resample=0, seed=0):
    schedule = get_schedule("cosine")
    den = gaussian_denoiser(MEAN, ICOV, schedule)
    known = torch.tensor([KNOWN_VALUE, -7.0], dtype=F64).view(1, 1, 1, 2).repeat(n, 1, 1, 1)
    mask = torch.tensor([0.0, 1.0], dtype=F64).view(1, 1, 1, 2).repeat(n, 1, 1, 1)
    g = _gen(seed)
    noise, known_noise = (torch.randn(n, 1, 1, 2, generator=g, dtype=F64) for _ in range(2))
    fresh = _gen(seed + 1)
    draw = lambda k: torch.randn(n, 1, 1, 2, generator=fresh, dtype=F64)  # noqa: E731
    wrapped = inpainting_denoiser(den, schedule, known, mask, known_noise, resample=resample,
                                  noise_sampler=draw if resample else None)
    out = sample(wrapped, schedule, noise, sampler, steps=steps, noise_sampler=generator_noise(noise, fresh))
    return known, out


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_inpainting_keeps_the_known_pixels_exactly(sampler):
    known, out = _inpaint(sampler, 10, n=256, resample=2 if sampler == "ddpm" else 0)
    assert torch.equal(out[..., 0], known[..., 0])
    # the redrawn pixel is the model's, not the known image's placeholder value (-7)
    assert (out[..., 1] - known[..., 1]).abs().min() > 3


def test_resampling_pulls_the_redrawn_pixel_toward_the_conditional_mean():
    """The exact conditional is N(m1 + c (k - m0), 1 - c^2) with c = 0.8. Replacing the known
    pixel alone is biased (the model reads a noisy copy of it: measured -0.16 here against
    the true 0.06); RePaint's resampling lets the two agree (measured +0.02 with 20 round
    trips). Its plug-in posterior also narrows the spread (variance 0.08 against 0.36 with
    20 round trips of 0.05), which is why resampling is off by default."""
    true_mean = (MEAN[1] + 0.8 * (KNOWN_VALUE - MEAN[0])).item()
    _, plain = _inpaint("ddpm", 100)
    _, resampled = _inpaint("ddpm", 100, resample=20)
    err_plain = abs(plain[..., 1].mean().item() - true_mean)
    err_resampled = abs(resampled[..., 1].mean().item() - true_mean)
    assert err_plain > 0.15 and err_resampled < 0.06


def test_soft_masks_blend_and_feathering_keeps_zeros():
    known, x = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:] = 1.0
    soft = feather(mask, 2)
    assert torch.equal(soft[..., :4], mask[..., :4])  # kept pixels stay exactly kept
    assert soft[..., 4].max() < 1.0 and soft[..., 7].min() == 1.0  # ramps up from the edge
    out = keep_known(x, known, soft)
    assert torch.equal(out[..., :4], known[..., :4]) and torch.equal(out, soft.expand_as(x))
    with pytest.raises(PixcadeError, match="soft edge radius"):
        feather(mask, -1)


def test_inpainting_bad_shapes_and_options_are_named():
    schedule = get_schedule("cosine")
    den = gaussian_denoiser(MEAN, COV, schedule)
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(PixcadeError, match="do not match"):
        inpainting_denoiser(den, schedule, x, torch.zeros(2, 1, 4, 4), x)
    with pytest.raises(PixcadeError, match="resample count"):
        inpainting_denoiser(den, schedule, x, torch.zeros(2, 1, 8, 8), x, resample=-1)
    with pytest.raises(PixcadeError, match="jump"):
        inpainting_denoiser(den, schedule, x, torch.zeros(2, 1, 8, 8), x, jump=0.0)
    with pytest.raises(PixcadeError, match="noise sampler"):
        inpainting_denoiser(den, schedule, x, torch.zeros(2, 1, 8, 8), x, resample=1)


@pytest.mark.parametrize("t_start", [0.0, 1.5])
def test_bad_start_times_are_named(t_start):
    schedule = get_schedule("cosine")
    with pytest.raises(PixcadeError, match="starting time"):
        sample(gaussian_denoiser(MEAN, COV, schedule), schedule, torch.zeros(1, 2, 1, 1), "ddim",
               steps=3, t_start=t_start)


# Half precision: the network sees z rounded to the dtype and its x0 is rounded to it; the
# sampler keeps fp32. Stated bound, with u the dtype's unit roundoff (2^-8 bf16, 2^-11
# fp16): every sample within 4 u (1 + |x|) of the fp32 one, the mean absolute difference
# and the difference of the means and covariances (relative) at most u. Measured worst
# cases over both schedules and all samplers (4000 samples, |x| up to ~4): bf16 max 0.026,
# mean 0.0021 (u = 0.0039); fp16 max 0.0040, mean 0.00029 (u = 0.00049).
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


@pytest.mark.parametrize("schedule_name", ["cosine", "linear"])
@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_sampling_stays_near_fp32(schedule_name, sampler, dtype):
    schedule = get_schedule(schedule_name)
    exact = gaussian_denoiser(MEAN, COV, schedule)
    den = lambda z, t: exact(z.double(), t).float()  # noqa: E731  (an fp32 network)
    noise = whitened_noise(4000, 2, 0).float()
    steps = {"dpm++": 20, "ddim": 50, "ddpm": 250}[sampler]
    runs = [
        sample(d, schedule, noise, sampler, steps=steps, noise_sampler=generator_noise(noise, _gen(1)))
        for d in (den, in_precision(den, dtype))
    ]
    ref, half = runs
    u = UNIT_ROUNDOFF[dtype]
    diff = (half - ref).abs()
    assert torch.all(diff <= 4 * u * (1 + ref.abs()))
    assert diff.mean() <= u
    (m, c), (m0, c0) = moments(half), moments(ref)
    assert (m - m0).norm() <= u and rel_err(c, c0) <= u
