"""Noise schedules in continuous time t in [0, 1], each given by its log-SNR.

Everything else (alpha, sigma, the samplers' step sizes) is derived from log-SNR with
sigmoid forms, so nothing cancels catastrophically at t = 0 or t = 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pixcade.errors import PixcadeError

# Both schedules are clipped to this range: beyond it the image (or the noise) is below
# float32 resolution anyway, and the ends stay finite.
LOG_SNR_MIN = -20.0
LOG_SNR_MAX = 20.0


def alpha_sigma(log_snr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) of z = alpha * x0 + sigma * eps: alpha^2 = sigmoid(log_snr), sigma^2 = 1 - alpha^2."""
    return torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()


class Schedule:
    """A variance-preserving schedule: a decreasing map t -> log-SNR and its inverse."""

    name: str

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CosineSchedule(Schedule):
    """alpha^2 = cos^2(pi t / 2), i.e. log-SNR = -2 log tan(pi t / 2) (Nichol & Dhariwal 2021),
    its SNR multiplied by ``snr_scale`` (log-SNR shifted by log snr_scale).

    Rather than clipping log-SNR afterwards, t is mapped linearly onto the angles whose
    log-SNR spans [LOG_SNR_MIN, LOG_SNR_MAX] (the form of Hoogeboom et al. 2023), so the
    map stays smooth and exactly invertible on all of [0, 1].

    Why a scale: averaging an image 2x2 quarters its noise variance, so a d px image at
    log-SNR lambda shows its layout as a d/2 px image does at lambda + log 4. A stage
    trained at d px to start a D px stage from (`train.init_from`) sees, at each t, the
    layout noise the D px stage will see when its SNR is scaled by (D / d)^2 (Hoogeboom et
    al. 2023 shift log-SNR by 2 log(64 / d) for the same reason). Named ``"cosine:SCALE"``.
    """

    def __init__(self, snr_scale: float = 1.0) -> None:
        if not (math.isfinite(snr_scale) and snr_scale > 0):
            raise PixcadeError(f"schedule cosine:{snr_scale}: the SNR scale must be a positive number")
        self.snr_scale = snr_scale
        self._shift = math.log(snr_scale)
        self._lo = math.atan(math.exp(-(LOG_SNR_MAX - self._shift) / 2))  # angle at t = 0
        self._hi = math.atan(math.exp(-(LOG_SNR_MIN - self._shift) / 2))  # angle at t = 1

    @property
    def name(self) -> str:  # type: ignore[override]
        return "cosine" if self.snr_scale == 1.0 else f"cosine:{self.snr_scale:g}"

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        log_snr = self._shift - 2.0 * torch.log(torch.tan(self._lo + t * (self._hi - self._lo)))
        return log_snr.clamp(LOG_SNR_MIN, LOG_SNR_MAX)  # float32 tan near pi/2 overshoots

    def t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        angle = torch.atan(torch.exp(-0.5 * (log_snr - self._shift)))
        return ((angle - self._lo) / (self._hi - self._lo)).clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return f"CosineSchedule(snr_scale={self.snr_scale:g})"


class LinearBetaSchedule(Schedule):
    """The VP-SDE with beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021).

    It is the continuous limit of DDPM's 1000 linear betas 1e-4..0.02: alpha^2 =
    exp(-B(t)) with B the integral of beta, so log-SNR = -log(expm1(B(t))). It reaches
    log-SNR ~ -10 at t = 1 and +inf at t = 0, where it is clipped to LOG_SNR_MAX.
    """

    name = "linear"
    beta_min = 0.1
    beta_max = 20.0

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        integral = self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t
        return (-torch.log(torch.expm1(integral))).clamp(LOG_SNR_MIN, LOG_SNR_MAX)

    def t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        integral = F.softplus(-log_snr)  # log1p(exp(-log_snr)), stable both ways
        # Root of beta_min t + (d/2) t^2 = B, written without the (-b + sqrt) cancellation.
        d = self.beta_max - self.beta_min
        t = 2.0 * integral / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * d * integral))
        return t.clamp(0.0, 1.0)


SCHEDULES: dict[str, type[Schedule]] = {"cosine": CosineSchedule, "linear": LinearBetaSchedule}


def get_schedule(name: str) -> Schedule:
    """The schedule called ``name``: "cosine", "linear", or "cosine:SCALE" (the cosine
    schedule with its SNR multiplied by SCALE, `CosineSchedule`)."""
    kind, colon, arg = name.partition(":")
    if kind not in SCHEDULES or (colon and kind != "cosine"):
        raise PixcadeError(f"unknown schedule {name!r} (choose from {', '.join(SCHEDULES)}, cosine:SCALE)")
    if not colon:
        return SCHEDULES[kind]()
    try:
        scale = float(arg)
    except ValueError:
        raise PixcadeError(f"schedule {name!r}: SCALE must be a number, e.g. cosine:4") from None
    return CosineSchedule(scale)
