"""Classifier-free guidance and x0 thresholding, wrapped into one denoiser for the samplers."""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch

from pixcade.diffusion.parameterization import check_parameterization, per_sample, to_x0
from pixcade.diffusion.schedules import Schedule, alpha_sigma
from pixcade.errors import PixcadeError

Threshold = Callable[[torch.Tensor], torch.Tensor]
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def static_threshold(x0: torch.Tensor) -> torch.Tensor:
    return x0.clamp(-1.0, 1.0)


def _percentile(values: torch.Tensor, percentile: float) -> torch.Tensor:
    """Per-row percentile of [B, N] with linear interpolation (numpy's default).

    torch.quantile refuses inputs above 2**24 elements, which a batch of 1024px images
    exceeds; kthvalue has no such limit.
    """
    pos = percentile / 100.0 * (values.shape[1] - 1)
    lo = math.floor(pos)
    low = values.kthvalue(lo + 1, dim=1).values
    if pos == lo:
        return low
    high = values.kthvalue(lo + 2, dim=1).values
    return low + (pos - lo) * (high - low)


def dynamic_threshold(x0: torch.Tensor, percentile: float = 99.5) -> torch.Tensor:
    """Imagen's dynamic thresholding, per sample.

    s = the percentile of |x0|; where s > 1, x0 is clipped to [-s, s] and divided by s
    (so it lands in [-1, 1]); where s <= 1 the sample is left as it is.
    """
    if not 0.0 < percentile <= 100.0:
        raise PixcadeError(f"dynamic threshold percentile must be in (0, 100], got {percentile}")
    s = _percentile(x0.detach().abs().flatten(1).float(), percentile)
    s = per_sample(s.to(x0.dtype), x0)
    return torch.where(s > 1.0, torch.minimum(torch.maximum(x0, -s), s) / s, x0)


def parse_threshold(spec: str) -> Threshold | None:
    """"none" -> None, "static", "dynamic" (p = 99.5) or "dynamic:P" -> a function of x0."""
    name, colon, arg = spec.strip().partition(":")
    if name == "none" and not colon:
        return None
    if name == "static" and not colon:
        return static_threshold
    if name == "dynamic" and not colon:
        return dynamic_threshold
    if name == "dynamic":
        try:
            p = float(arg)
        except ValueError:
            p = math.nan
        if 0.0 < p <= 100.0:
            return functools.partial(dynamic_threshold, percentile=p)
    raise PixcadeError(
        f"bad threshold {spec!r} (use none, static, dynamic or dynamic:P with 0 < P <= 100)"
    )


def combine(out_c: torch.Tensor, out_u: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance of raw outputs: out_u + w (out_c - out_u).

    w = 1 is the conditional output, w = 0 the unconditional one; ``w`` is a number or a
    per-sample tensor broadcasting against the outputs. The one definition of w in pixcade.
    """
    return out_u + w * (out_c - out_u)


def guided_output(
    net: Callable[..., torch.Tensor],
    cond: dict[str, torch.Tensor],
    uncond: dict[str, torch.Tensor] | None,
    guidance_weight: float | torch.Tensor,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(z, t) -> raw output`` guided with weight ``guidance_weight`` (a number, or one per
    sample [B]). Both passes run as one forward on a batch of 2B (conditional rows first);
    with a plain weight of 1, or ``uncond`` None, only the conditional pass runs."""
    w = guidance_weight
    if uncond is None or (not isinstance(w, torch.Tensor) and w == 1.0):
        return lambda z, t: net(z, t, **cond)
    if set(cond) != set(uncond):
        raise PixcadeError(f"cond keys {sorted(cond)} != uncond keys {sorted(uncond)}")
    both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}

    def guided(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out_c, out_u = net(torch.cat([z, z]), torch.cat([t, t]), **both).chunk(2)
        return combine(out_c, out_u, per_sample(w, out_c) if isinstance(w, torch.Tensor) else w)

    return guided


def guided_denoiser(
    net: Callable[..., torch.Tensor],
    schedule: Schedule,
    param: str,
    cond: dict[str, torch.Tensor],
    uncond: dict[str, torch.Tensor] | None,
    guidance_weight: float,
    threshold: str | Threshold | None,
) -> Denoiser:
    """``denoiser(z, t) -> x0`` with classifier-free guidance and thresholding.

    ``net(z, t, **cond)`` returns a raw output of parameterisation ``param``. The guidance
    eps = w eps_c + (1 - w) eps_u is applied to the raw outputs: every conversion between
    parameterisations is an affine map f of the output with coefficients that depend only
    on (z, t), shared by both passes, and an affine map preserves combinations whose
    weights sum to one, f(w a + (1 - w) b) = w f(a) + (1 - w) f(b). So guiding raw outputs
    is exactly guiding eps (or x0, or v), without round trips through 1/alpha or 1/sigma.
    """
    check_parameterization(param)
    thresh = parse_threshold(threshold) if isinstance(threshold, str) else threshold
    guided = guided_output(net, cond, uncond, float(guidance_weight))

    def denoiser(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = guided(z, t)
        alpha, sigma = alpha_sigma(per_sample(schedule.log_snr(t), z))
        x0 = to_x0(out, z, alpha, sigma, param)
        return x0 if thresh is None else thresh(x0)

    return denoiser
