"""What the network predicts: eps (Imagen's), v (Salimans & Ho 2022) or x0.

With z = alpha * x0 + sigma * eps and alpha^2 + sigma^2 = 1, v = alpha * eps - sigma * x0.
Every conversion below is affine in the model output for fixed (z, alpha, sigma); the
guidance relies on that. alpha and sigma broadcast against the images ([B, 1, 1, 1]).
"""

from __future__ import annotations

import torch

from pixcade.errors import PixcadeError

PARAMETERIZATIONS = ("eps", "v", "x0")


def check_parameterization(param: str) -> None:
    if param not in PARAMETERIZATIONS:
        raise PixcadeError(
            f"unknown parameterization {param!r} (choose from {', '.join(PARAMETERIZATIONS)})"
        )


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample tensor [B] so it broadcasts against ``like`` [B, ...]."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def model_target(
    x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, param: str
) -> torch.Tensor:
    """What a perfect network of parameterisation ``param`` outputs for z = alpha x0 + sigma eps."""
    check_parameterization(param)
    if param == "eps":
        return eps
    if param == "x0":
        return x0
    return alpha * eps - sigma * x0


def to_x0(
    out: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, param: str
) -> torch.Tensor:
    """The x0 estimate implied by a model output."""
    check_parameterization(param)
    if param == "x0":
        return out
    if param == "eps":
        return (z - sigma * out) / alpha
    return alpha * z - sigma * out


def to_eps(
    out: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, param: str
) -> torch.Tensor:
    """The eps estimate implied by a model output."""
    check_parameterization(param)
    if param == "eps":
        return out
    if param == "x0":
        return (z - alpha * out) / sigma
    return sigma * z + alpha * out


def convert(
    out: torch.Tensor,
    z: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    src: str,
    dst: str,
) -> torch.Tensor:
    """Re-express a model output of parameterisation ``src`` in parameterisation ``dst``."""
    check_parameterization(dst)
    if src == dst:
        check_parameterization(src)
        return out
    x0 = to_x0(out, z, alpha, sigma, src)
    eps = to_eps(out, z, alpha, sigma, src)
    return model_target(x0, eps, alpha, sigma, dst)
