"""The training loss: MSE on the parameterisation's target at a random noise level."""

from __future__ import annotations

from typing import Callable

import torch

from pixcade.diffusion.parameterization import check_parameterization, model_target, per_sample
from pixcade.diffusion.schedules import Schedule, alpha_sigma
from pixcade.errors import PixcadeError


def min_snr_weight(log_snr: torch.Tensor, gamma: float, param: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), per sample.

    The scheme weights the x0-space error by min(SNR, gamma). Since, at fixed z,
    |eps - eps^|^2 = SNR |x0 - x0^|^2 and |v - v^|^2 = (SNR + 1) |x0 - x0^|^2, the same
    weighting on an eps or v loss is min(SNR, gamma) / SNR or min(SNR, gamma) / (SNR + 1).
    """
    check_parameterization(param)
    snr = torch.exp(log_snr)
    clipped = snr.clamp(max=gamma)
    if param == "x0":
        return clipped
    if param == "eps":
        return (gamma * torch.exp(-log_snr)).clamp(max=1.0)  # min(SNR, gamma) / SNR
    return clipped * torch.sigmoid(-log_snr)  # 1 / (SNR + 1) = sigmoid(-log_snr)


# Where `training_t`'s high-noise range starts unless a config says otherwise.
HIGH_NOISE_FROM = 0.85


def training_t(u: torch.Tensor, high_noise_share: float, high_noise_from: float) -> torch.Tensor:
    """Noise levels for training from uniform draws ``u`` in [0, 1].

    t follows the mixture (1 - share) U[0, 1] + share U[from, 1]: each sample, not a fixed
    slice of the batch, so any batch size gets the mixture. It is the mixture's inverse CDF
    applied to ``u`` (one draw per sample; share 0 returns ``u`` itself), so a run without
    the option draws the same random stream as before it existed. Sampling t from a density
    p(t) weights the loss at t by p(t): the share moves training towards high noise, where a
    sample's layout is decided and the text is the only signal about it.
    """
    s, f = float(high_noise_share), float(high_noise_from)
    if not 0.0 <= s <= 1.0:
        raise PixcadeError(f"high-noise share must be in [0, 1], got {high_noise_share}")
    if not 0.0 <= f < 1.0:
        raise PixcadeError(f"high-noise range start must be in [0, 1), got {high_noise_from}")
    if s == 0.0:
        return u
    # CDF: (1 - s) t below f; above it the U[f, 1] part adds s (t - f) / (1 - f). Inverted
    # piece by piece; the pieces meet at u = (1 - s) f.
    knee = (1.0 - s) * f
    low = u / (1.0 - s) if s < 1.0 else torch.full_like(u, f)
    high = (u + s * f / (1.0 - f)) / ((1.0 - s) + s / (1.0 - f))
    return torch.where(u < knee, low, high)


def diffusion_loss(
    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    schedule: Schedule,
    param: str,
    *,
    min_snr_gamma: float | None = None,
    high_noise_share: float = 0.0,
    high_noise_from: float = HIGH_NOISE_FROM,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample loss [B]; the caller reduces.

    ``net(z, t)`` returns the raw output. ``t`` defaults to uniform in [0, 1], with
    ``high_noise_share`` of the samples instead uniform in [high_noise_from, 1] (see
    `training_t`), and ``noise`` to standard normal, both drawn from ``generator``.
    """
    check_parameterization(param)
    if min_snr_gamma is not None and not min_snr_gamma > 0:
        raise PixcadeError(f"min-SNR gamma must be positive, got {min_snr_gamma}")
    if t is None:
        u = torch.rand(x0.shape[0], generator=generator, device=x0.device)
        t = training_t(u, high_noise_share, high_noise_from)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    log_snr = schedule.log_snr(t)
    alpha, sigma = alpha_sigma(per_sample(log_snr, x0))
    out = net(alpha * x0 + sigma * noise, t)
    if out.shape != x0.shape:
        raise PixcadeError(f"network output shape {tuple(out.shape)} != image shape {tuple(x0.shape)}")
    target = model_target(x0, noise, alpha, sigma, param)
    loss = (out.float() - target.float()).square().flatten(1).mean(dim=1)
    if min_snr_gamma is not None:
        loss = loss * min_snr_weight(log_snr.float(), min_snr_gamma, param)
    return loss
