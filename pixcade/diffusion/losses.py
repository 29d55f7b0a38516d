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


def diffusion_loss(
    net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    schedule: Schedule,
    param: str,
    *,
    min_snr_gamma: float | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample loss [B]; the caller reduces.

    ``net(z, t)`` returns the raw output. ``t`` defaults to uniform in [0, 1] and ``noise``
    to standard normal, both drawn from ``generator``.
    """
    check_parameterization(param)
    if min_snr_gamma is not None and not min_snr_gamma > 0:
        raise PixcadeError(f"min-SNR gamma must be positive, got {min_snr_gamma}")
    if t is None:
        t = torch.rand(x0.shape[0], generator=generator, device=x0.device)
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
