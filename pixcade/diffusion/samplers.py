"""Samplers: pure functions over ``denoiser(z, t) -> x0``.

Each takes ``steps`` denoiser calls from the caller's ``noise`` (z at t = 1) and returns
the last x0 estimate: the final step goes to t = 0, where z = x0. Thresholding and
guidance live in the denoiser, so every sampler applies them at every step.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from pixcade.diffusion.schedules import LOG_SNR_MAX, Schedule, alpha_sigma
from pixcade.errors import PixcadeError

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor], None]
# step index -> fresh standard normal noise shaped like z, for the samplers that draw it.
# A function rather than a generator so that a caller can draw each image's noise from its
# own seed (the pipeline does, so an ancestral sample does not depend on its batch-mates).
NoiseSampler = Callable[[int], torch.Tensor]


def generator_noise(z: torch.Tensor, generator: torch.Generator | None) -> NoiseSampler:
    """Fresh noise shaped like ``z`` from one generator (the global RNG when None)."""
    return lambda step: torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)

# DPM-Solver++'s grid is uniform in log-SNR over this range. At +10, sigma ~ 0.007 is under
# one 8-bit level of a [-1, 1] image; below -10, alpha < 0.007 and x0^ barely moves, so the
# first step jumps there from t = 1 in one (exact for constant x0^) exponential-integrator
# step instead of spending evenly spaced steps on it.
DPM_LOG_SNR_RANGE = (-10.0, 10.0)


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PixcadeError(f"steps must be a positive integer, got {steps!r}")


def _denoise(
    denoiser: Denoiser, z: torch.Tensor, t: float, step: int, total: int, callback: Callback | None
) -> torch.Tensor:
    dtype = torch.promote_types(z.dtype, torch.float32)  # t in bf16 would be too coarse
    x0 = denoiser(z, torch.full((z.shape[0],), t, device=z.device, dtype=dtype))
    if callback is not None:
        callback(step + 1, total, x0)
    return x0


def _ddim_step(
    z: torch.Tensor,
    x0: torch.Tensor,
    lam_t: float,
    lam_s: float,
    eta: float,
    fresh: torch.Tensor | None,
) -> torch.Tensor:
    """z_t -> z_s (s < t) given the x0 estimate (Song et al. 2021, in log-SNR form).

    c = sigma_{t|s}^2 / sigma_t^2 = 1 - exp(lam_t - lam_s) is the share of sigma_s^2 that
    the posterior q(z_s | z_t, x0) draws afresh; eta = 1 draws exactly that (ancestral
    DDPM), eta = 0 none (deterministic DDIM). ``fresh`` is that standard normal draw
    (unused when eta = 0).
    """
    alpha, sigma = alpha_sigma(torch.tensor([lam_t, lam_s], dtype=torch.float64))
    (a_t, a_s), (s_t, s_s) = alpha.tolist(), sigma.tolist()
    c = -math.expm1(lam_t - lam_s)
    eps = (z - a_t * x0) / s_t
    z = a_s * x0 + s_s * math.sqrt(1.0 - eta * eta * c) * eps
    if eta > 0:
        if fresh is None or fresh.shape != z.shape:
            got = None if fresh is None else list(fresh.shape)
            raise PixcadeError(f"fresh noise of shape {list(z.shape)} is needed for eta > 0, got {got}")
        z = z + eta * s_s * math.sqrt(c) * fresh.to(device=z.device, dtype=z.dtype)
    return z


def sample_ddim(
    denoiser: Denoiser,
    schedule: Schedule,
    noise: torch.Tensor,
    steps: int,
    *,
    eta: float = 0.0,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDIM with stochasticity eta in [0, 1], on a grid uniform in t (as DDPM/DDIM use).

    For eta > 0, step i's fresh noise is ``noise_sampler(i)`` (default: the global RNG).
    """
    _check_steps(steps)
    if not 0.0 <= eta <= 1.0:
        raise PixcadeError(f"DDIM eta must be in [0, 1], got {eta}")
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    lam = schedule.log_snr(ts).tolist()
    if noise_sampler is None:
        noise_sampler = generator_noise(noise, None)
    z = noise
    for i in range(steps - 1):
        x0 = _denoise(denoiser, z, ts[i].item(), i, steps, callback)
        z = _ddim_step(z, x0, lam[i], lam[i + 1], eta, noise_sampler(i) if eta > 0 else None)
    return _denoise(denoiser, z, ts[steps - 1].item(), steps - 1, steps, callback)


def sample_ddpm(
    denoiser: Denoiser,
    schedule: Schedule,
    noise: torch.Tensor,
    steps: int,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Imagen's sampler): z_s ~ q(z_s | z_t, x0^).

    That posterior is DDIM's step with eta = 1 (the test suite checks it against the
    textbook mean and variance).
    """
    return sample_ddim(
        denoiser, schedule, noise, steps, eta=1.0, noise_sampler=noise_sampler, callback=callback
    )


def sample_dpmpp_2m(
    denoiser: Denoiser,
    schedule: Schedule,
    noise: torch.Tensor,
    steps: int,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, algorithm 2): a deterministic multistep solver of
    the probability-flow ODE, second order in lambda = log(alpha / sigma) = log-SNR / 2.

    The grid is uniform in log-SNR over DPM_LOG_SNR_RANGE, its first point moved to t = 1
    (uniform in log-SNR suits a solver whose steps are exact in it). ``noise_sampler`` is
    unused (the solver draws no noise); it is accepted so all samplers share one signature.
    """
    _check_steps(steps)
    del noise_sampler
    lam_one = schedule.log_snr(torch.ones((), dtype=torch.float64)).item()
    start, end = max(DPM_LOG_SNR_RANGE[0], lam_one), min(DPM_LOG_SNR_RANGE[1], LOG_SNR_MAX)
    ts = schedule.t_from_log_snr(torch.linspace(start, end, steps, dtype=torch.float64))
    ts[0] = 1.0
    lam = schedule.log_snr(ts)  # the exact log-SNR of each t the denoiser sees
    alpha, sigma = (v.tolist() for v in alpha_sigma(lam))
    lam = lam.tolist()
    z, x0_prev, h_prev = noise, None, 0.0
    for i in range(steps - 1):
        x0 = _denoise(denoiser, z, ts[i].item(), i, steps, callback)
        h = 0.5 * (lam[i + 1] - lam[i])
        # Second order from the previous x0: extrapolate linearly in lambda to mid-step.
        d = x0 if x0_prev is None else x0 + (h / (2.0 * h_prev)) * (x0 - x0_prev)
        z = (sigma[i + 1] / sigma[i]) * z - alpha[i + 1] * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return _denoise(denoiser, z, ts[steps - 1].item(), steps - 1, steps, callback)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpm++": sample_dpmpp_2m,
}


def sample(
    denoiser: Denoiser,
    schedule: Schedule,
    noise: torch.Tensor,
    sampler: str = "dpm++",
    *,
    steps: int,
    **kwargs,
) -> torch.Tensor:
    """Run the sampler called ``sampler`` (see SAMPLERS); kwargs go to it."""
    if sampler not in SAMPLERS:
        raise PixcadeError(f"unknown sampler {sampler!r} (choose from {', '.join(SAMPLERS)})")
    return SAMPLERS[sampler](denoiser, schedule, noise, steps, **kwargs)
