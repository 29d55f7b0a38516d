"""Editing an existing image with any sampler: SDEdit starts and inpainting.

Pure functions over tensors, a schedule and a ``denoiser(z, t) -> x0``: nothing here knows
a U-Net or which sampler runs. Images are ``[B, C, H, W]`` in [-1, 1]; a mask is
``[B, 1, H, W]`` in [0, 1] where 1 marks pixels to redraw and 0 pixels to keep (values
between blend the two, for soft edges).

- SDEdit (Meng et al. 2022): noise the image to time ``strength`` with the forward process
  and sample from there. Strength 0 is the image itself, strength 1 plain generation.
- Inpainting: at every denoiser call the known region of z is replaced by the known image
  noised to the current time, and the known region of the x0 estimate by the known image
  itself, so every sampler sees a z whose known part lies on the forward path and returns
  the known pixels exactly. Optional RePaint-style resampling (Lugmayr et al. 2022): at
  each call, step the posterior down by ``jump`` in t and diffuse back up ``resample``
  times before the sampler's own step, which lets the redrawn region agree with the kept
  one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pixcade.diffusion.samplers import Denoiser, NoiseSampler, _ddim_step, sample
from pixcade.diffusion.schedules import Schedule, alpha_sigma
from pixcade.errors import PixcadeError

DEFAULT_JUMP = 0.05  # RePaint's jump in t: 10 of its 250 steps is 0.04


def check_strength(strength: float) -> float:
    """Strength as a float in [0, 1]; anything else is a one-line error."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise PixcadeError(f"strength must be a number in [0, 1], got {strength!r}")
    return float(strength)


def check_resampling(resample: int, jump: float) -> None:
    if isinstance(resample, bool) or not isinstance(resample, int) or resample < 0:
        raise PixcadeError(f"inpainting resample count must be an integer >= 0, got {resample!r}")
    if not 0.0 < jump < 1.0:
        raise PixcadeError(f"inpainting jump must be in (0, 1), got {jump!r}")


def noise_to(x0: torch.Tensor, noise: torch.Tensor, schedule: Schedule, t: float | torch.Tensor) -> torch.Tensor:
    """The forward process: z_t = alpha_t x0 + sigma_t noise (t one value, or one per row)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    alpha, sigma = alpha_sigma(schedule.log_snr(t))
    if alpha.ndim:
        alpha, sigma = alpha.view(-1, 1, 1, 1), sigma.view(-1, 1, 1, 1)
    alpha, sigma = alpha.to(device=x0.device, dtype=x0.dtype), sigma.to(device=x0.device, dtype=x0.dtype)
    return alpha * x0 + sigma * noise.to(device=x0.device, dtype=x0.dtype)


def sdedit_start(x0: torch.Tensor, noise: torch.Tensor, schedule: Schedule, strength: float) -> torch.Tensor:
    """The sampler's starting z for SDEdit at ``strength`` in (0, 1].

    Strength 1 returns ``noise`` itself, so the run is exactly plain generation (the
    schedule's alpha at t = 1 is tiny but not zero).
    """
    strength = check_strength(strength)
    if strength == 0.0:
        raise PixcadeError("strength 0 samples nothing: the image is its own result")
    return noise if strength == 1.0 else noise_to(x0, noise, schedule, strength)


def keep_known(x: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mask * x + (1 - mask) * known, exact where the mask is 0 (``known`` returned there)."""
    return torch.lerp(known, x, mask.to(x.dtype))


def inpainting_denoiser(
    denoiser: Denoiser,
    schedule: Schedule,
    known: torch.Tensor,
    mask: torch.Tensor,
    known_noise: torch.Tensor,
    *,
    resample: int = 0,
    jump: float = DEFAULT_JUMP,
    noise_sampler: NoiseSampler | None = None,
) -> Denoiser:
    """Wrap ``denoiser`` so every sampler inpaints the masked region of ``known``.

    ``known_noise`` (shaped like ``known``) is the fixed noise that puts the known region on
    the forward path: z's known part at t is alpha_t known + sigma_t known_noise, which is
    also exactly what a deterministic sampler's step carries it to from the x0 this wrapper
    returns. ``noise_sampler(k)`` gives the k-th fresh draw of the resampling loop (needed
    when ``resample`` > 0).
    """
    check_resampling(resample, jump)
    if known.shape != known_noise.shape or mask.shape[0] != known.shape[0] or mask.shape[-2:] != known.shape[-2:]:
        raise PixcadeError(
            f"inpainting: image {list(known.shape)}, mask {list(mask.shape)} and noise "
            f"{list(known_noise.shape)} do not match"
        )
    if resample and noise_sampler is None:
        raise PixcadeError("inpainting with resampling needs a noise sampler")
    draws = 0

    def fresh() -> torch.Tensor:
        nonlocal draws
        draws += 1
        return noise_sampler(draws - 1)

    def impose(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return keep_known(z, noise_to(known, known_noise, schedule, t.double()), mask)

    def wrapped(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        z = impose(z, t)
        x0 = keep_known(denoiser(z, t), known, mask)
        t_now = float(t[0])
        t_low = t_now - jump
        for _ in range(resample if t_low > 0.0 else 0):
            z = _resample(z, x0, schedule, t_now, t_low, fresh(), fresh())
            z = impose(z, t)
            x0 = keep_known(denoiser(z, t), known, mask)
        return x0

    return wrapped


def _resample(
    z: torch.Tensor, x0: torch.Tensor, schedule: Schedule, t: float, s: float,
    noise_down: torch.Tensor, noise_up: torch.Tensor,
) -> torch.Tensor:
    """One RePaint round trip: z_s ~ q(z_s | z_t, x0), then z_t ~ q(z_t | z_s)."""
    lam = schedule.log_snr(torch.tensor([t, s], dtype=torch.float64))
    z_s = _ddim_step(z, x0, lam[0].item(), lam[1].item(), 1.0, noise_down)  # eta 1: the posterior
    (a_t, a_s), (s_t, s_s) = (v.tolist() for v in alpha_sigma(lam))
    a_ts = a_t / a_s
    return a_ts * z_s + math.sqrt(max(s_t * s_t - a_ts * a_ts * s_s * s_s, 0.0)) * noise_up.to(z)


def feather(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """A soft-edged mask for the final blend: 0 stays 0 (kept pixels stay exact); inside the
    redrawn region the mask ramps up from the edge over about ``radius`` pixels."""
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise PixcadeError(f"soft edge radius must be an integer >= 0, got {radius!r}")
    if radius == 0:
        return mask
    k = 2 * radius + 1
    blurred = F.avg_pool2d(
        F.pad(mask, (radius,) * 4, mode="replicate"), k, stride=1
    )
    return mask * blurred



@dataclass
class ImageEdit:
    """What one stage is asked to keep of an existing image (one row per sample).

    ``image`` is the input at the stage's resolution; ``strength`` the SDEdit start (1:
    from pure noise); ``mask`` (None: no inpainting) the region to redraw, with
    ``known_noise`` the fixed noise of its kept region and ``resample_noise`` the fresh
    draws of RePaint's round trips when ``resample`` > 0.
    """

    image: torch.Tensor
    strength: float = 1.0
    mask: torch.Tensor | None = None
    known_noise: torch.Tensor | None = None
    resample: int = 0
    jump: float = DEFAULT_JUMP
    resample_noise: NoiseSampler | None = None


def sample_edit(
    edit: ImageEdit,
    denoiser: Denoiser,
    schedule: Schedule,
    noise: torch.Tensor,
    sampler: str,
    *,
    steps: int,
    **kwargs: Any,
) -> torch.Tensor:
    """Run ``sampler`` (kwargs go to it) as the edit asks: from the image noised to the
    edit's strength, inpainting its masked region when it has a mask. Strength 0 samples
    nothing and returns the image."""
    strength = check_strength(edit.strength)
    if edit.image.shape != noise.shape:
        raise PixcadeError(f"the image to edit has shape {list(edit.image.shape)}, expected {list(noise.shape)}")
    if strength == 0.0:
        return edit.image
    if edit.mask is not None:
        if edit.known_noise is None:
            raise PixcadeError("inpainting needs the kept region's noise")
        denoiser = inpainting_denoiser(
            denoiser, schedule, edit.image, edit.mask, edit.known_noise,
            resample=edit.resample, jump=edit.jump, noise_sampler=edit.resample_noise,
        )
    z = sdedit_start(edit.image, noise, schedule, strength)
    return sample(denoiser, schedule, z, sampler, steps=steps, t_start=strength, **kwargs)
