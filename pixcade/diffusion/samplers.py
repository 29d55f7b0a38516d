"""Samplers: a time grid and a solver, both pure functions, named in two registries.

A spacing ``(schedule, steps) -> ts`` gives ``steps + 1`` times falling from t = 1 to
t = 0 (as k-diffusion separates sigmas from solvers). A solver
``(denoiser, schedule, noise, ts, *, noise_sampler, callback, **own)`` calls
``denoiser(z, t) -> x0`` at the first ``steps`` times, starting from the caller's
``noise`` (z at t = 1), and returns its last x0 estimate: its last step lands at t = 0,
where z = x0. Thresholding and guidance live in the denoiser, so every solver applies them
at every step.

A new spacing is one function and one SPACINGS row; a new sampler one function and one
SAMPLERS row. Its keyword-only arguments (besides noise_sampler and callback), each with a
default of type bool, int, float or str, are its own options: `SamplingSettings.sampler_args`
is checked against them, so they reach saved models, the CLI and the server with no other
edit.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from pixcade.diffusion.schedules import LOG_SNR_MAX, Schedule, alpha_sigma
from pixcade.errors import PixcadeError
from pixcade.limits import check_limit

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor], None]
# step index -> fresh standard normal noise shaped like z, for the samplers that draw it.
# A function rather than a generator so that a caller can draw each image's noise from its
# own seed (the pipeline does, so an ancestral sample does not depend on its batch-mates).
NoiseSampler = Callable[[int], torch.Tensor]
Spacing = Callable[[Schedule, int, float], torch.Tensor]  # (schedule, steps, t_max) -> times t_max .. 0


def check_steps(steps: Any, name: str = "steps") -> int:
    """``steps`` if it is an integer from 1 to the ``steps`` limit (each step is one
    denoiser call and the time grid is allocated up front, so a typo such as 10**9 must be
    refused before any work), else PixcadeError naming ``name``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PixcadeError(f"{name} must be an integer >= 1, got {steps!r}")
    check_limit("steps", steps, name)
    return steps


def generator_noise(z: torch.Tensor, generator: torch.Generator | None) -> NoiseSampler:
    """Fresh noise shaped like ``z`` from one generator (the global RNG when None)."""
    return lambda step: torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)


# -- time grids -------------------------------------------------------------------------


def uniform_t(schedule: Schedule, steps: int, t_max: float = 1.0) -> torch.Tensor:
    """Uniform in t from ``t_max`` to 0 (DDPM's and DDIM's grid)."""
    del schedule
    return torch.linspace(t_max, 0.0, steps + 1, dtype=torch.float64)


# The log-SNR grid spans this range. At +10, sigma ~ 0.007 is under one 8-bit level of a
# [-1, 1] image; below -10, alpha < 0.007 and x0^ barely moves, so the first step jumps
# there from t = 1 in one (exact for constant x0^) exponential-integrator step instead of
# spending evenly spaced steps on it.
DPM_LOG_SNR_RANGE = (-10.0, 10.0)


def uniform_log_snr(schedule: Schedule, steps: int, t_max: float = 1.0) -> torch.Tensor:
    """Uniform in log-SNR from that of ``t_max`` (at least DPM_LOG_SNR_RANGE's low end) to
    its high end, the first point moved to t_max (suits a solver whose steps are exact in
    log-SNR, as DPM-Solver++'s are)."""
    lam_max = schedule.log_snr(torch.tensor(float(t_max), dtype=torch.float64)).item()
    start, end = max(DPM_LOG_SNR_RANGE[0], lam_max), min(DPM_LOG_SNR_RANGE[1], LOG_SNR_MAX)
    ts = schedule.t_from_log_snr(torch.linspace(start, end, steps, dtype=torch.float64))
    ts[0] = t_max
    return torch.cat([ts, ts.new_zeros(1)])


def check_start(t: Any, name: str = "the starting time") -> float:
    """``t`` as a float if it is a number in (0, 1] (not a bool), else PixcadeError naming ``name``."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t <= 1.0:
        raise PixcadeError(f"{name} must be in (0, 1], got {t!r}")
    return float(t)


def start_at(ts: torch.Tensor, t_start: float) -> torch.Tensor:
    """The grid ``ts`` (falling to 0) run from ``t_start`` in (0, 1]: t_start, then the
    times below it. At or above the grid's first time it is ``ts`` itself."""
    check_start(t_start)
    if t_start >= float(ts[0]):
        return ts
    return torch.cat([ts.new_tensor([float(t_start)]), ts[ts < t_start]])


SPACINGS: dict[str, Spacing] = {
    "uniform-t": uniform_t,
    "log-snr": uniform_log_snr,
}


# -- solvers ----------------------------------------------------------------------------


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


def _ddim(
    denoiser: Denoiser,
    schedule: Schedule,
    noise: torch.Tensor,
    ts: torch.Tensor,
    eta: float,
    noise_sampler: NoiseSampler | None,
    callback: Callback | None,
) -> torch.Tensor:
    """DDIM with stochasticity eta in [0, 1]; step i's fresh noise (eta > 0) is
    ``noise_sampler(i)`` (default: the global RNG)."""
    steps = len(ts) - 1
    lam = schedule.log_snr(ts).tolist()
    if noise_sampler is None:
        noise_sampler = generator_noise(noise, None)
    z = noise
    for i in range(steps - 1):
        x0 = _denoise(denoiser, z, ts[i].item(), i, steps, callback)
        z = _ddim_step(z, x0, lam[i], lam[i + 1], eta, noise_sampler(i) if eta > 0 else None)
    return _denoise(denoiser, z, ts[steps - 1].item(), steps - 1, steps, callback)


def _check_ddim(eta: float) -> None:
    if not 0.0 <= eta <= 1.0:
        raise PixcadeError(f"DDIM eta must be in [0, 1], got {eta}")


def sample_ddim(
    denoiser: Denoiser,
    schedule: Schedule,
    noise: torch.Tensor,
    ts: torch.Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM (Song et al. 2021) with stochasticity ``eta`` in [0, 1]: 0 is deterministic,
    1 draws the full posterior variance (ancestral DDPM); every eta keeps the marginals."""
    _check_ddim(eta)
    return _ddim(denoiser, schedule, noise, ts, eta, noise_sampler, callback)


def sample_ddpm(
    denoiser: Denoiser,
    schedule: Schedule,
    noise: torch.Tensor,
    ts: torch.Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Imagen's sampler): z_s ~ q(z_s | z_t, x0^).

    That posterior is DDIM's step with eta = 1 (the test suite checks it against the
    textbook mean and variance).
    """
    return _ddim(denoiser, schedule, noise, ts, 1.0, noise_sampler, callback)


def sample_dpmpp_2m(
    denoiser: Denoiser,
    schedule: Schedule,
    noise: torch.Tensor,
    ts: torch.Tensor,
    *,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, algorithm 2): a deterministic multistep solver of
    the probability-flow ODE, second order in lambda = log(alpha / sigma) = log-SNR / 2.

    ``noise_sampler`` is unused (the solver draws no noise); it is accepted so all solvers
    share one signature.
    """
    del noise_sampler
    steps = len(ts) - 1
    lam = schedule.log_snr(ts[:steps])  # the exact log-SNR of each t the denoiser sees
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


# -- the registry -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sampler:
    """A registry row: the solver, the time grid it runs on unless told otherwise and,
    for a solver with its own arguments, ``check(**args)`` raising PixcadeError on a bad
    value (called with every argument, defaults filled in, before any work)."""

    solve: Callable[..., torch.Tensor]
    spacing: str
    check: Callable[..., None] | None = None


SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(sample_ddpm, "uniform-t"),
    "ddim": Sampler(sample_ddim, "uniform-t", check=_check_ddim),
    "dpm++": Sampler(sample_dpmpp_2m, "log-snr"),
}

_COMMON_ARGS = ("noise_sampler", "callback")


def _row(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise PixcadeError(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")
    return SAMPLERS[name]


def check_spacing(name: str) -> Spacing:
    if name not in SPACINGS:
        raise PixcadeError(f"unknown spacing {name!r} (choose from {', '.join(SPACINGS)})")
    return SPACINGS[name]


def sampler_arg_defaults(name: str) -> dict[str, Any]:
    """The keyword arguments of sampler ``name`` a user may set, with their defaults."""
    params = inspect.signature(_row(name).solve).parameters.values()
    return {
        p.name: p.default for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _COMMON_ARGS
    }


def check_sampler(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``args`` for sampler ``name`` against its signature; return them typed (an
    int for a float argument becomes a float). Raises PixcadeError naming the problem."""
    row = _row(name)
    defaults = sampler_arg_defaults(name)
    unknown = sorted(set(args) - set(defaults))
    if unknown:
        takes = ", ".join(defaults) or "none"
        raise PixcadeError(f"sampler {name!r} takes no argument {', '.join(map(repr, unknown))} "
                           f"(its arguments: {takes})")
    typed = {}
    for key, value in args.items():
        kind = type(defaults[key])
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind or (kind is float and not math.isfinite(value)):
            raise PixcadeError(f"sampler {name!r}: {key} must be a finite {kind.__name__}, got {value!r}")
        typed[key] = value
    if row.check is not None:
        row.check(**{**defaults, **typed})
    return typed


def sample(
    denoiser: Denoiser,
    schedule: Schedule,
    noise: torch.Tensor,
    sampler: str = "dpm++",
    *,
    steps: int,
    spacing: str | None = None,
    noise_sampler: NoiseSampler | None = None,
    callback: Callback | None = None,
    t_start: float = 1.0,
    t_max: float = 1.0,
    **sampler_args: Any,
) -> torch.Tensor:
    """Run the sampler called ``sampler`` (see SAMPLERS) for ``steps`` denoiser calls on the
    time grid ``spacing`` (see SPACINGS; default: the sampler's own). ``sampler_args`` are
    the sampler's own keyword arguments.

    With ``t_max`` < 1 the grid spans [0, t_max], all ``steps`` calls in it, and ``noise``
    is z at t_max (a super-resolution stage started from its noised upsampled input). With
    ``t_start`` < 1 (SDEdit), ``noise`` is z at t_start and the run is the tail of that
    grid: t_start, then the grid's times below it (fewer denoiser calls)."""
    row = _row(sampler)
    args = check_sampler(sampler, sampler_args)
    check_steps(steps)
    check_start(t_max, "t_max")
    ts = start_at(check_spacing(spacing or row.spacing)(schedule, steps, t_max), t_start)
    return row.solve(denoiser, schedule, noise, ts, noise_sampler=noise_sampler, callback=callback, **args)
