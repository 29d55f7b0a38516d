"""Data with an analytic optimal denoiser E[x0 | z_t], for testing samplers against theory.

Samples are 2-D vectors shaped [B, 2, 1, 1] (the samplers only see image-like tensors).
"""

from __future__ import annotations

import torch

from pixcade.diffusion.schedules import Schedule, alpha_sigma


def _alpha_sigma_at(schedule: Schedule, t: torch.Tensor) -> tuple[float, float]:
    assert torch.all(t == t[0]), "the samplers evaluate one noise level per call"
    alpha, sigma = alpha_sigma(schedule.log_snr(t[:1].double()))
    return alpha.item(), sigma.item()


def gaussian_denoiser(mean: torch.Tensor, cov: torch.Tensor, schedule: Schedule):
    """E[x0 | z] for x0 ~ N(mean, cov): mean + a C (a^2 C + s^2 I)^-1 (z - a mean)."""
    eye = torch.eye(len(mean), dtype=cov.dtype)

    def denoiser(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = _alpha_sigma_at(schedule, t)
        gain = a * cov @ torch.linalg.inv(a * a * cov + s * s * eye)
        x = mean + (z.flatten(1) - a * mean) @ gain.T
        return x.view_as(z).to(z.dtype)

    return denoiser


class Mixture:
    """A mixture of isotropic Gaussians: weights [K], means [K, D], stds [K]."""

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, stds: torch.Tensor):
        self.weights, self.means, self.stds = weights, means, stds

    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    def cov(self) -> torch.Tensor:
        d = self.means.shape[1]
        second = sum(
            w * (s * s * torch.eye(d, dtype=m.dtype) + torch.outer(m, m))
            for w, m, s in zip(self.weights, self.means, self.stds)
        )
        m = self.mean()
        return second - torch.outer(m, m)

    def denoiser(self, schedule: Schedule):
        """Responsibility-weighted posterior means of the components."""
        d = self.means.shape[1]

        def denoiser(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            a, s = _alpha_sigma_at(schedule, t)
            x = z.flatten(1).double()  # [B, D]
            var = a * a * self.stds**2 + s * s  # [K]: component variance of z
            diff = x[:, None, :] - a * self.means[None]  # [B, K, D]
            logp = (
                self.weights.log()
                - 0.5 * diff.square().sum(-1) / var
                - 0.5 * d * var.log()
            )
            resp = logp.softmax(dim=1)  # [B, K]
            post = self.means[None] + (a * self.stds**2 / var)[None, :, None] * diff
            return (resp[:, :, None] * post).sum(1).view_as(z).to(z.dtype)

        return denoiser


def whitened_noise(n: int, d: int, seed: int) -> torch.Tensor:
    """[n, d, 1, 1] standard normal noise whose sample mean is exactly 0 and sample
    covariance exactly I: a deterministic sampler driven by a linear (Gaussian) denoiser
    is an affine map of its noise, so its output moments then carry no Monte-Carlo error,
    only the sampler's own discretisation error."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(x.T @ x / n)
    x = torch.linalg.solve_triangular(chol, x.T, upper=False).T
    return x.view(n, d, 1, 1)


def moments(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean and (1/n) covariance of [n, d, 1, 1] samples."""
    x = samples.flatten(1).double()
    m = x.mean(0)
    c = (x - m).T @ (x - m) / len(x)
    return m, c


def rel_err(est: torch.Tensor, true: torch.Tensor) -> float:
    return (torch.linalg.norm(est - true) / torch.linalg.norm(true)).item()


def in_precision(denoiser, dtype: torch.dtype):
    """A model of a network run in ``dtype`` (what `--dtype` does to the U-Net): it sees z
    rounded to ``dtype`` and its x0 is rounded to ``dtype``; the sampler's own state and
    arithmetic stay in z's precision."""

    def rounded(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return denoiser(z.to(dtype), t).to(dtype).to(z.dtype)

    return rounded
