"""Schedules and parameterisations: closed forms, inverses, safety at t = 0 and t = 1."""

from __future__ import annotations

import math

import pytest
import torch

from pixcade.diffusion.parameterization import (
    PARAMETERIZATIONS, convert, model_target, to_eps, to_x0,
)
from pixcade.diffusion.schedules import (
    LOG_SNR_MAX, LOG_SNR_MIN, SCHEDULES, alpha_sigma, get_schedule,
)
from pixcade.errors import PixcadeError

NAMES = [*SCHEDULES, "cosine:4", "cosine:0.25"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_end_points_are_finite(name, dtype):
    schedule = get_schedule(name)
    t = torch.tensor([0.0, 1e-9, 0.5, 1 - 1e-7, 1.0], dtype=dtype)
    lam = schedule.log_snr(t)
    alpha, sigma = alpha_sigma(lam)
    for v in (lam, alpha, sigma, schedule.t_from_log_snr(lam)):
        assert torch.isfinite(v).all()
    assert lam[0] == pytest.approx(LOG_SNR_MAX, abs=1e-3)
    assert LOG_SNR_MIN <= lam[-1] < -9.0 and lam.max() <= LOG_SNR_MAX
    assert sigma[0] < 1e-4 and alpha[-1] < 1e-2  # clean at t = 0, noise at t = 1


@pytest.mark.parametrize("name", NAMES)
def test_monotone_and_round_trips(name):
    schedule = get_schedule(name)
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    lam = schedule.log_snr(t)
    assert torch.all(lam[1:] < lam[:-1])
    # (linear clips log-SNR at t < ~2e-8, which is where its round trip may move t)
    torch.testing.assert_close(schedule.t_from_log_snr(lam), t, atol=1e-7, rtol=0)
    grid = torch.linspace(lam[-1].item(), LOG_SNR_MAX, 500, dtype=torch.float64)
    torch.testing.assert_close(schedule.log_snr(schedule.t_from_log_snr(grid)), grid,
                               atol=1e-6, rtol=0)
    # float32 round trip, as the samplers' denoisers see it
    t32 = t.float()
    assert (schedule.t_from_log_snr(schedule.log_snr(t32)) - t32).abs().max() < 1e-4
    # Inverse clamps out-of-range log-SNR onto [0, 1].
    ends = schedule.t_from_log_snr(torch.tensor([1e4, -1e4]))
    assert ends.tolist() == [0.0, 1.0]


def test_alpha_sigma_is_variance_preserving_and_safe():
    lam = torch.tensor([-1e4, -40.0, -20.0, 0.0, 20.0, 40.0, 1e4])
    alpha, sigma = alpha_sigma(lam)
    assert torch.isfinite(alpha).all() and torch.isfinite(sigma).all()
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(lam))
    # log-SNR is recovered from the tiny side without cancellation.
    torch.testing.assert_close(2 * torch.log(alpha[1:-1] / sigma[1:-1]), lam[1:-1])
    assert alpha[3].item() == pytest.approx(math.sqrt(0.5))


def test_cosine_is_cos_squared():
    """In the interior alpha^2 = cos^2(pi t / 2) (the t-range map moves it by ~1e-4)."""
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    alpha, _ = alpha_sigma(get_schedule("cosine").log_snr(t))
    torch.testing.assert_close(alpha**2, torch.cos(math.pi * t / 2) ** 2, atol=2e-4, rtol=0)


@pytest.mark.parametrize("t", [0.2, 0.5, 0.8])
def test_scaled_cosine_is_the_layout_noise_of_twice_the_size(t):
    """Averaging a 2d px noisy image 2x2 gives a d px image whose SNR is 4x: the plain
    cosine at 2d px, pooled, has the log-SNR of cosine:4 at d px at the same t."""
    g = torch.Generator().manual_seed(0)
    small = torch.rand(64, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    large = small.repeat_interleave(2, -1).repeat_interleave(2, -2)  # its layout at 32 px
    alpha, sigma = alpha_sigma(get_schedule("cosine").log_snr(torch.tensor(t, dtype=torch.float64)))
    noisy = alpha * large + sigma * torch.randn(large.shape, generator=g, dtype=torch.float64)
    pooled = torch.nn.functional.avg_pool2d(noisy, 2)
    measured = torch.log(alpha**2 / (pooled - alpha * small).var())
    expected = get_schedule("cosine:4").log_snr(torch.tensor(t, dtype=torch.float64))
    assert measured.item() == pytest.approx(expected.item(), abs=0.02)  # 49k noise samples
    assert expected.item() == pytest.approx(get_schedule("cosine").log_snr(torch.tensor(t)).item() + math.log(4),
                                            abs=1e-3)


@pytest.mark.parametrize("name, message", [("cosine:x", "SCALE must be a number"),
                                           ("cosine:0", "must be a positive number"),
                                           ("cosine:nan", "must be a positive number"),
                                           ("linear:2", "unknown schedule 'linear:2'")])
def test_a_bad_scale_is_one_line(name, message):
    with pytest.raises(PixcadeError, match=message):
        get_schedule(name)


def test_linear_matches_discrete_ddpm_betas():
    """Continuous limit of DDPM's betas linspace(1e-4, 0.02, 1000): alpha_bar agrees."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    k = torch.tensor([100, 300, 500, 700, 1000])
    alpha, _ = alpha_sigma(get_schedule("linear").log_snr(k.double() / 1000))
    # log alpha_bar to 2%: the discrete product and the integral differ at O(beta^2).
    torch.testing.assert_close(torch.log(alpha**2), torch.log(alpha_bar[k - 1]), rtol=0.02, atol=0)


def test_unknown_schedule():
    with pytest.raises(PixcadeError, match="unknown schedule 'sigmoid'"):
        get_schedule("sigmoid")


# -- parameterisations ----------------------------------------------------------------


def _state(t: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(4, 3, 5, 5, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    lam = get_schedule("cosine").log_snr(torch.full((4,), t, dtype=torch.float64))
    alpha, sigma = alpha_sigma(lam.view(-1, 1, 1, 1))
    return x0, eps, alpha, sigma, alpha * x0 + sigma * eps


@pytest.mark.parametrize("param", PARAMETERIZATIONS)
@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_target_recovers_x0_and_eps(param, t):
    x0, eps, alpha, sigma, z = _state(t)
    out = model_target(x0, eps, alpha, sigma, param)
    torch.testing.assert_close(to_x0(out, z, alpha, sigma, param), x0)
    torch.testing.assert_close(to_eps(out, z, alpha, sigma, param), eps)


@pytest.mark.parametrize("src", PARAMETERIZATIONS)
@pytest.mark.parametrize("dst", PARAMETERIZATIONS)
def test_convert_round_trip(src, dst):
    x0, eps, alpha, sigma, z = _state(0.4, seed=1)
    out = torch.randn_like(z)  # any output, not only a perfect one
    there = convert(out, z, alpha, sigma, src, dst)
    torch.testing.assert_close(convert(there, z, alpha, sigma, dst, src), out)
    # Converting a perfect prediction yields the other parameterisation's perfect one.
    perfect = model_target(x0, eps, alpha, sigma, src)
    torch.testing.assert_close(convert(perfect, z, alpha, sigma, src, dst),
                               model_target(x0, eps, alpha, sigma, dst))


@pytest.mark.parametrize("t", [0.0, 1.0])
def test_v_is_stable_at_both_ends(t):
    """v converts to x0 and eps without dividing by alpha or sigma."""
    x0, eps, alpha, sigma, z = _state(t, seed=2)
    v = model_target(x0, eps, alpha, sigma, "v")
    torch.testing.assert_close(to_x0(v, z, alpha, sigma, "v"), x0)
    torch.testing.assert_close(to_eps(v, z, alpha, sigma, "v"), eps)


def test_unknown_parameterization():
    x0, eps, alpha, sigma, z = _state(0.5)
    with pytest.raises(PixcadeError, match="unknown parameterization 'score'"):
        to_x0(x0, z, alpha, sigma, "score")
    with pytest.raises(PixcadeError, match="'score'"):
        convert(x0, z, alpha, sigma, "score", "score")
    with pytest.raises(PixcadeError, match="'noise'"):
        model_target(x0, eps, alpha, sigma, "noise")
