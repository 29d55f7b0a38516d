"""Distilling a diffusion model into a cheaper student: the two objectives, as pure functions.

- Guidance distillation (Meng et al. 2023, their stage one): a student that takes the
  guidance weight w as an input learns, in one pass, the teacher's guided output
  ``guidance.combine(cond, uncond, w)`` of two passes. Both are raw outputs of the same
  parameterisation, so the loss is the teacher's own training loss with the guided output
  as its target; sampling the student with the teacher's sampler and threshold then
  reproduces the guided teacher at half the network evaluations.
- Progressive distillation (Salimans & Ho 2022, Algorithm 2): a student of N deterministic
  DDIM steps, on the grid t_k = k / N that `samplers.sample_ddim` walks, learns at t = i / N
  the x0 whose single DDIM step to s = (i - 1) / N lands where two DDIM steps of the
  teacher (through the midpoint t - 1 / (2N)) land: x~ = (z_s - (sigma_s / sigma_t) z_t) /
  (alpha_s - (sigma_s / sigma_t) alpha_t). At s = 0 the sampler's last step returns its x0,
  so there the target is the teacher's x0 at its last step. A ``factor`` k > 2 puts k equal
  teacher steps in the student's one (TRACT, Berthelot et al. 2023): a few steps are reached
  in fewer rounds, so less of each round's error compounds. The target is expressed in
  the student's parameterisation and the loss is MSE there: for v that is |x0 error|^2 /
  sigma_t^2 = (1 + SNR) |x0 error|^2, the paper's "SNR + 1" weighting, and the one the
  teacher was trained with. Not for eps: an eps network gives x0 = (z - sigma eps) / alpha,
  which at t = 1 (alpha ~ 5e-5) multiplies every error by ~20,000, so the first of a few
  large steps cannot be learnt (the paper's reason for v).

Networks are closures holding their conditioning: ``net(z, t) -> raw output``; the
teacher of the halving loss is a ``denoiser(z, t) -> x0`` with guidance and thresholding
applied, exactly as a sampler sees it. Nothing here knows of U-Nets or text.
"""

from __future__ import annotations

from typing import Callable

import torch

from pixcade.diffusion.parameterization import check_parameterization, model_target, per_sample, to_eps, to_x0
from pixcade.diffusion.samplers import Denoiser
from pixcade.diffusion.schedules import Schedule, alpha_sigma
from pixcade.errors import PixcadeError

Net = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_student_steps(steps: int) -> None:
    """Raise PixcadeError unless ``steps`` is a student's step count (a positive integer)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PixcadeError(f"a distilled student needs a positive whole number of steps, got {steps!r}")


def check_factor(factor: int) -> None:
    """Raise PixcadeError unless ``factor`` (teacher steps per student step) is a whole number >= 2."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise PixcadeError(f"teacher steps per student step must be a whole number >= 2, got {factor!r}")


def check_halving(param: str, steps: int) -> None:
    """Raise PixcadeError unless a ``steps``-step student of parameterisation ``param`` can
    be distilled from a 2 * ``steps``-step teacher."""
    check_parameterization(param)
    check_student_steps(steps)
    if param == "eps":
        raise PixcadeError(
            "progressive distillation needs a v or x0 parameterisation: an eps network cannot "
            "express x0 at the first, low-SNR step"
        )


def _mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if out.shape != target.shape:
        raise PixcadeError(f"student output shape {tuple(out.shape)} != target shape {tuple(target.shape)}")
    return (out.float() - target.float()).square().flatten(1).mean(dim=1)


def thresholded_output(
    net: Net, schedule: Schedule, param: str, threshold: Callable[[torch.Tensor], torch.Tensor]
) -> Net:
    """``net`` (raw outputs of parameterisation ``param``) with its x0 passed through
    ``threshold`` and expressed again as a raw output at the same z_t: the output of a
    network that, sampled without a threshold, steps exactly as ``net`` does with one. As a
    guided-distillation target it spends none of the student's capacity on the extrapolated
    values (|x0| >> 1 at high guidance and noise) that the sampler would clip anyway."""
    check_parameterization(param)

    def out(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raw = net(z, t)
        alpha, sigma = alpha_sigma(per_sample(schedule.log_snr(t), z))
        x0 = threshold(to_x0(raw, z, alpha, sigma, param))
        return model_target(x0, to_eps(x0, z, alpha, sigma, "x0"), alpha, sigma, param)

    return out


def guided_distillation_loss(
    student: Net,
    teacher: Net,
    x0: torch.Tensor,
    schedule: Schedule,
    *,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample loss [B]: the student's raw output against the teacher's guided raw output
    at the same z_t, t ~ U[0, 1] (or ``t``), noise standard normal (or ``noise``).

    ``teacher(z, t)`` returns the guided output at each sample's w, ``student(z, t)`` one
    pass at that w; the teacher runs without gradients.
    """
    if t is None:
        t = torch.rand(x0.shape[0], generator=generator, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    alpha, sigma = alpha_sigma(per_sample(schedule.log_snr(t), x0))
    z = alpha * x0 + sigma * noise
    with torch.no_grad():
        target = teacher(z, t)
    return _mse(student(z, t), target)


def _ddim(z: torch.Tensor, x0: torch.Tensor, a_t, s_t, a_s, s_s) -> torch.Tensor:
    """One deterministic DDIM step z_t -> z_s given x0 (per-sample alpha, sigma)."""
    return a_s * x0 + s_s * (z - a_t * x0) / s_t


def _coefficients(schedule: Schedule, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha, sigma at float64 times ``t`` (as the samplers compute them), shaped and typed like ``like``."""
    alpha, sigma = alpha_sigma(schedule.log_snr(t.double()))
    return per_sample(alpha, like).to(like.dtype), per_sample(sigma, like).to(like.dtype)


def halving_target(
    teacher: Denoiser, z: torch.Tensor, i: torch.Tensor, steps: int, schedule: Schedule, factor: int = 2
) -> torch.Tensor:
    """The x0 a ``steps``-step student should predict at z_t, t = i / steps (``i`` [B] in
    1..steps): the x0 of one DDIM step to (i - 1) / steps that lands where ``factor`` equal
    DDIM steps of the ``teacher`` denoiser land (2: Salimans & Ho's halving; more: TRACT,
    Berthelot et al. 2023). Runs the teacher ``factor`` times, without gradients."""
    check_student_steps(steps)
    check_factor(factor)
    if i.shape != (z.shape[0],) or bool((i < 1).any() | (i > steps).any()):
        raise PixcadeError(f"step indices must be [{z.shape[0]}] integers in 1..{steps}")
    i = i.to(torch.float64)
    dtype = torch.promote_types(z.dtype, torch.float32)  # as the samplers pass t
    times = [(i - k / factor) / steps for k in range(factor + 1)]  # t, the teacher's stops, s
    coeffs = [_coefficients(schedule, v, z) for v in times]
    with torch.no_grad():
        z_k = z
        for k in range(factor):
            x_k = teacher(z_k, times[k].to(dtype))
            z_k = _ddim(z_k, x_k, *coeffs[k], *coeffs[k + 1])
        (a_t, s_t), (a_s, s_s) = coeffs[0], coeffs[-1]
        ratio = s_s / s_t
        x_target = (z_k - ratio * z) / (a_s - ratio * a_t)
        last = per_sample(times[-1] == 0, z)  # the sampler returns its x0 there: no step to s = 0
        return torch.where(last, x_k, x_target)


def halving_loss(
    student: Net,
    teacher: Denoiser,
    x0: torch.Tensor,
    schedule: Schedule,
    param: str,
    steps: int,
    *,
    factor: int = 2,
    i: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample loss [B] of a ``steps``-step student against a ``factor`` * ``steps``-step teacher.

    Each sample's step ``i`` is uniform in 1..steps (or given), z_t = alpha_t x0 + sigma_t
    noise at t = i / steps; the target is `halving_target` in parameterisation ``param``.
    """
    check_halving(param, steps)
    b = x0.shape[0]
    if i is None:
        i = torch.randint(1, steps + 1, (b,), generator=generator, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    alpha, sigma = _coefficients(schedule, i.double() / steps, x0)
    z = alpha * x0 + sigma * noise
    x_target = halving_target(teacher, z, i, steps, schedule, factor)
    eps_target = (z - alpha * x_target) / sigma
    target = model_target(x_target, eps_target, alpha, sigma, param)
    t = (i.double() / steps).to(torch.promote_types(x0.dtype, torch.float32))
    return _mse(student(z, t), target)
