"""Samplers against theory: driven by the exact E[x0 | z_t] of known data, each must
reproduce the data's mean and covariance; plus the structural contract (steps, seeds,
callbacks, errors)."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_theory import Mixture, gaussian_denoiser, moments, rel_err, whitened_noise
from pixcade.diffusion.guidance import guided_denoiser
from pixcade.diffusion.samplers import SAMPLERS, _ddim_step, generator_noise, sample
from pixcade.diffusion.schedules import alpha_sigma, get_schedule
from pixcade.errors import PixcadeError

F64 = torch.float64
MEAN = torch.tensor([0.3, -0.5], dtype=F64)
COV = torch.tensor([[1.0, 0.4], [0.4, 0.5]], dtype=F64)
MIXTURE = Mixture(
    weights=torch.tensor([0.3, 0.7], dtype=F64),
    means=torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=F64),
    stds=torch.tensor([0.3, 0.5], dtype=F64),
)

# (sampler, steps, mean tolerance, relative covariance tolerance (Frobenius)).
# Deterministic samplers on whitened noise show only discretisation error: measured
# ~3% for DPM-Solver++ at 20 steps (second order), 5-7% for DDIM at 50 (first order,
# it under-disperses). Ancestral DDPM draws fresh noise, so its bounds add Monte-Carlo
# error (~1% per covariance entry at 12k samples) to a ~2% discretisation bias.
CASES = [("dpm++", 20, 0.01, 0.05), ("ddim", 50, 0.01, 0.10), ("ddpm", 250, 0.04, 0.06)]
# The mixture has a nonlinear denoiser, so every sampler carries Monte-Carlo error there
# (mean standard error ~0.008 at 12k samples).
MIXTURE_MEAN_TOL = 0.035


def _noise(n: int, seed: int, whitened: bool) -> torch.Tensor:
    if whitened:
        return whitened_noise(n, 2, seed)
    return torch.randn(n, 2, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("schedule_name", ["cosine", "linear"])
@pytest.mark.parametrize("sampler,steps,mean_tol,cov_tol", CASES)
def test_gaussian_moments(schedule_name, sampler, steps, mean_tol, cov_tol):
    schedule = get_schedule(schedule_name)
    noise = _noise(12000, 0, whitened=sampler != "ddpm")
    out = sample(
        gaussian_denoiser(MEAN, COV, schedule), schedule, noise, sampler, steps=steps,
        noise_sampler=generator_noise(noise, torch.Generator().manual_seed(1)),
    )
    mean, cov = moments(out)
    assert (mean - MEAN).norm() < mean_tol
    assert rel_err(cov, COV) < cov_tol


@pytest.mark.parametrize("schedule_name", ["cosine", "linear"])
@pytest.mark.parametrize("sampler,steps,_mean_tol,cov_tol", CASES)
def test_mixture_moments(schedule_name, sampler, steps, _mean_tol, cov_tol):
    schedule = get_schedule(schedule_name)
    noise = _noise(12000, 2, whitened=False)
    out = sample(
        MIXTURE.denoiser(schedule), schedule, noise, sampler, steps=steps,
        noise_sampler=generator_noise(noise, torch.Generator().manual_seed(3)),
    )
    mean, cov = moments(out)
    assert (mean - MIXTURE.mean()).norm() < MIXTURE_MEAN_TOL
    assert rel_err(cov, MIXTURE.cov()) < cov_tol
    # The modes are populated in proportion: P(x < 0) = sum_k w_k Phi(-mu_k / s_k) ~ 0.316
    # (standard error ~0.004 at 12k samples).
    phi = lambda u: 0.5 * (1.0 + math.erf(u / math.sqrt(2.0)))  # noqa: E731
    below = sum(w * phi(-m[0] / s) for w, m, s in
                zip(MIXTURE.weights.tolist(), MIXTURE.means.tolist(), MIXTURE.stds.tolist()))
    assert abs((out[:, 0] < 0).double().mean().item() - below) < 0.02


@pytest.mark.parametrize("sampler,order", [("dpm++", 2), ("ddim", 1)])
def test_convergence_order(sampler, order):
    """Doubling the steps divides the covariance error by about 2**order."""
    schedule = get_schedule("cosine")
    noise = whitened_noise(256, 2, 0)
    denoiser = gaussian_denoiser(MEAN, COV, schedule)
    errs = [rel_err(moments(sample(denoiser, schedule, noise, sampler, steps=n))[1], COV)
            for n in (25, 50, 100)]
    assert errs[0] > errs[1] > errs[2]
    ratio = errs[1] / errs[2]
    assert 0.75 * 2**order < ratio < 1.35 * 2**order, errs


def test_ddpm_step_is_the_textbook_posterior():
    """q(z_s | z_t, x0) = N(a_ts s_s^2 / s_t^2 z_t + a_s s_ts^2 / s_t^2 x0, s_ts^2 s_s^2 / s_t^2)
    with a_ts = a_t / a_s and s_ts^2 = s_t^2 - a_ts^2 s_s^2 (Kingma et al. 2021)."""
    schedule = get_schedule("cosine")
    lam_t, lam_s = schedule.log_snr(torch.tensor([0.6, 0.55], dtype=F64)).tolist()
    (a_t, a_s), (s_t, s_s) = (v.tolist() for v in alpha_sigma(torch.tensor([lam_t, lam_s], dtype=F64)))
    z = torch.randn(3, 2, 4, 4, dtype=F64)
    x0 = torch.randn(3, 2, 4, 4, dtype=F64)
    fresh = torch.randn(z.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    got = _ddim_step(z, x0, lam_t, lam_s, 1.0, fresh)
    a_ts = a_t / a_s
    var_ts = s_t**2 - a_ts**2 * s_s**2
    mean = a_ts * s_s**2 / s_t**2 * z + a_s * var_ts / s_t**2 * x0
    std = math.sqrt(var_ts * s_s**2 / s_t**2)
    torch.testing.assert_close(got, mean + std * fresh)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_same_seed_same_image(sampler):
    schedule = get_schedule("cosine")
    den = MIXTURE.denoiser(schedule)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(8, 2, 1, 1, generator=g, dtype=F64)
        return sample(den, schedule, noise, sampler, steps=7, noise_sampler=generator_noise(noise, g))

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))


def test_ddpm_draws_its_fresh_noise_from_the_noise_sampler():
    """Step i's fresh noise is noise_sampler(i), once per step but the last (which goes to
    t = 0 without noise); scaling it moves the sample, so it really is what is added."""
    schedule = get_schedule("cosine")
    den = MIXTURE.denoiser(schedule)
    noise = _noise(16, 8, whitened=False)
    asked: list[int] = []

    def fresh(scale):
        def draw(step):
            asked.append(step)
            return scale * torch.randn(noise.shape, generator=torch.Generator().manual_seed(step), dtype=F64)
        return draw

    a = sample(den, schedule, noise, "ddpm", steps=6, noise_sampler=fresh(1.0))
    assert asked == list(range(5))
    assert torch.equal(a, sample(den, schedule, noise, "ddpm", steps=6, noise_sampler=fresh(1.0)))
    assert not torch.allclose(a, sample(den, schedule, noise, "ddpm", steps=6, noise_sampler=fresh(0.5)))
    # Deterministic samplers never ask for any.
    asked.clear()
    for name in ("ddim", "dpm++"):
        sample(den, schedule, noise, name, steps=6, noise_sampler=fresh(1.0))
    assert asked == []
    with pytest.raises(PixcadeError, match=r"fresh noise of shape \[16, 2, 1, 1\] is needed"):
        sample(den, schedule, noise, "ddpm", steps=3, noise_sampler=lambda step: torch.zeros(3))


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_steps_calls_and_callback(sampler, steps):
    schedule = get_schedule("cosine")
    calls, seen = [], []

    def den(z, t):
        calls.append(t.clone())
        return torch.full_like(z, float(len(calls)))

    noise = torch.randn(3, 1, 2, 2)
    out = sample(den, schedule, noise, sampler, steps=steps,
                 callback=lambda i, n, x0: seen.append((i, n, x0)))
    assert len(calls) == steps
    assert calls[0].shape == (3,) and torch.all(calls[0] == 1.0)  # starts at t = 1
    times = [c[0].item() for c in calls]
    assert times == sorted(times, reverse=True) and len(set(times)) == steps
    assert [(i, n) for i, n, _ in seen] == [(i + 1, steps) for i in range(steps)]
    assert torch.equal(out, seen[-1][2])  # the result is the last denoised x0
    assert torch.all(out == steps)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_threshold_applies_at_every_step(sampler):
    """A net that predicts x0 far outside [-1, 1]: every x0 the sampler uses is clipped."""
    schedule = get_schedule("cosine")
    net = lambda z, t, scale: 5.0 * scale * torch.ones_like(z)  # noqa: E731
    den = guided_denoiser(net, schedule, "x0", {"scale": torch.ones(2, 1, 1, 1)}, None, 1.0,
                          "dynamic:99")
    seen = []
    sample(den, schedule, torch.randn(2, 3, 4, 4), sampler, steps=4,
           callback=lambda i, n, x0: seen.append(x0))
    assert len(seen) == 4
    assert all(torch.allclose(x0, torch.ones_like(x0)) for x0 in seen)


def test_errors():
    schedule = get_schedule("cosine")
    den = gaussian_denoiser(MEAN, COV, schedule)
    noise = torch.zeros(1, 2, 1, 1, dtype=F64)
    with pytest.raises(PixcadeError, match="unknown sampler 'euler'"):
        sample(den, schedule, noise, "euler", steps=4)
    for bad in (0, -3, 2.5, True):
        for name in SAMPLERS:
            with pytest.raises(PixcadeError, match="steps"):
                sample(den, schedule, noise, name, steps=bad)
    with pytest.raises(PixcadeError, match="unknown spacing 'cubic' \\(choose from uniform-t, log-snr\\)"):
        sample(den, schedule, noise, "ddim", steps=4, spacing="cubic")
    with pytest.raises(PixcadeError, match="sampler 'dpm\\+\\+' takes no argument 'order' \\(its arguments: none\\)"):
        sample(den, schedule, noise, "dpm++", steps=4, order=3)
