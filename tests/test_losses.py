"""The training loss against closed forms: zero for a perfect net, the Gaussian MMSE
for the optimal one, and min-SNR weights that agree across parameterisations."""

from __future__ import annotations

import pytest
import torch

from pixcade.diffusion.losses import diffusion_loss, min_snr_weight, training_t
from pixcade.diffusion.parameterization import PARAMETERIZATIONS, convert, model_target
from pixcade.diffusion.schedules import alpha_sigma, get_schedule
from pixcade.errors import PixcadeError

F64 = torch.float64


def _batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, 4, 4, generator=g, dtype=F64) * 2 - 1, g


def _alpha_sigma(schedule, t, like):
    return alpha_sigma(schedule.log_snr(t).view(-1, *[1] * (like.ndim - 1)))


@pytest.mark.parametrize("param", PARAMETERIZATIONS)
def test_perfect_net_has_zero_loss(param):
    schedule = get_schedule("cosine")
    x0, g = _batch()
    t = torch.rand(6, generator=g, dtype=F64)
    noise = torch.randn(x0.shape, generator=g, dtype=F64)
    alpha, sigma = _alpha_sigma(schedule, t, x0)
    perfect = lambda z, tt: model_target(x0, noise, alpha, sigma, param)  # noqa: E731
    loss = diffusion_loss(perfect, x0, schedule, param, t=t, noise=noise)
    assert loss.shape == (6,)
    assert loss.abs().max() < 1e-12


def test_zero_net_losses_are_the_targets_energy():
    schedule = get_schedule("linear")
    x0, g = _batch()
    t = torch.rand(6, generator=g, dtype=F64)
    noise = torch.randn(x0.shape, generator=g, dtype=F64)
    zero = lambda z, tt: torch.zeros_like(z)  # noqa: E731
    alpha, sigma = _alpha_sigma(schedule, t, x0)
    expect = {
        "eps": noise.square().flatten(1).mean(1),
        "x0": x0.square().flatten(1).mean(1),
        "v": (alpha * noise - sigma * x0).square().flatten(1).mean(1),
    }
    for param, value in expect.items():
        got = diffusion_loss(zero, x0, schedule, param, t=t, noise=noise)
        torch.testing.assert_close(got, value.float())


@pytest.mark.parametrize("param", PARAMETERIZATIONS)
def test_optimal_net_reaches_gaussian_mmse(param):
    """x0 ~ N(0, v I): E[x0|z] = a v / (a^2 v + s^2) z and the x0 MMSE is v s^2 / (a^2 v + s^2);
    the eps and v errors are that times SNR and 1 / s^2."""
    schedule, var = get_schedule("cosine"), 0.3
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4000, 1, 8, 8, generator=g, dtype=F64) * var**0.5
    t = torch.full((4000,), 0.45, dtype=F64)
    alpha, sigma = _alpha_sigma(schedule, t, x0)
    a, s = alpha.flatten()[0].item(), sigma.flatten()[0].item()

    def optimal(z, tt):
        x0_hat = a * var / (a * a * var + s * s) * z
        return convert(x0_hat, z, alpha, sigma, "x0", param)

    mmse_x0 = var * s * s / (a * a * var + s * s)
    expect = {"x0": mmse_x0, "eps": mmse_x0 * a * a / (s * s), "v": mmse_x0 / (s * s)}[param]
    loss = diffusion_loss(optimal, x0, schedule, param, t=t, generator=g)
    # 256k squared errors: the mean is within ~0.3% (1 sigma); allow 2%.
    assert loss.mean().item() == pytest.approx(expect, rel=0.02)


def test_min_snr_weight_values():
    lam = torch.log(torch.tensor([0.5, 5.0, 20.0], dtype=F64))  # SNR 0.5, 5, 20
    snr = lam.exp()
    gamma = 5.0
    clipped = torch.tensor([0.5, 5.0, 5.0], dtype=F64)
    torch.testing.assert_close(min_snr_weight(lam, gamma, "x0"), clipped)
    torch.testing.assert_close(min_snr_weight(lam, gamma, "eps"), clipped / snr)
    torch.testing.assert_close(min_snr_weight(lam, gamma, "v"), clipped / (snr + 1))
    ends = min_snr_weight(torch.tensor([-20.0, 20.0]), gamma, "eps")
    assert torch.isfinite(ends).all() and ends[0] == 1.0


def test_min_snr_weighting_is_the_same_loss_in_every_parameterisation():
    """For one and the same (wrong) x0 estimate, the weighted eps, v and x0 losses all equal
    min(SNR, gamma) |x0 - x0^|^2: the weights are expressed correctly per target."""
    schedule, gamma = get_schedule("cosine"), 5.0
    x0, g = _batch(8, seed=3)
    t = torch.linspace(0.02, 0.98, 8, dtype=F64)
    noise = torch.randn(x0.shape, generator=g, dtype=F64)
    alpha, sigma = _alpha_sigma(schedule, t, x0)
    x0_hat = lambda z: 0.5 * z + 0.1  # noqa: E731
    losses = {
        p: diffusion_loss(lambda z, tt: convert(x0_hat(z), z, alpha, sigma, "x0", p),
                          x0, schedule, p, t=t, noise=noise, min_snr_gamma=gamma)
        for p in PARAMETERIZATIONS
    }
    z = alpha * x0 + sigma * noise
    snr = schedule.log_snr(t).exp()
    expect = snr.clamp(max=gamma) * (x0 - x0_hat(z)).square().flatten(1).mean(1)
    for p, loss in losses.items():
        torch.testing.assert_close(loss, expect.float(), rtol=1e-4, atol=1e-7, msg=p)


def test_defaults_draw_from_the_generator():
    schedule = get_schedule("cosine")
    x0, _ = _batch()
    net = lambda z, t: z * t.view(-1, 1, 1, 1)  # noqa: E731
    a = diffusion_loss(net, x0, schedule, "eps", generator=torch.Generator().manual_seed(5))
    b = diffusion_loss(net, x0, schedule, "eps", generator=torch.Generator().manual_seed(5))
    c = diffusion_loss(net, x0, schedule, "eps", generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_gradients_flow_to_the_net():
    schedule = get_schedule("cosine")
    x0, g = _batch()
    w = torch.zeros((), dtype=F64, requires_grad=True)
    diffusion_loss(lambda z, t: w * z, x0, schedule, "v", generator=g).mean().backward()
    assert w.grad is not None and w.grad.item() != 0.0


def test_errors():
    schedule = get_schedule("cosine")
    x0, _ = _batch()
    ident = lambda z, t: z  # noqa: E731
    with pytest.raises(PixcadeError, match="parameterization"):
        diffusion_loss(ident, x0, schedule, "score")
    for gamma in (0.0, -1.0):
        with pytest.raises(PixcadeError, match="gamma"):
            diffusion_loss(ident, x0, schedule, "eps", min_snr_gamma=gamma)
    with pytest.raises(PixcadeError, match="output shape"):
        diffusion_loss(lambda z, t: z[:, :1], x0, schedule, "eps")


def _mixture_cdf(t, share, start):
    return (1 - share) * t + share * ((t - start) / (1 - start)).clamp(0, 1)


@pytest.mark.parametrize("share,start", [(0.3, 0.85), (0.5, 0.6), (1.0, 0.85), (0.9, 0.0)])
def test_training_t_follows_the_high_noise_mixture(share, start):
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(1), dtype=F64)
    t = training_t(u, share, start)
    assert t.min() >= 0 and t.max() <= 1
    # Kolmogorov-Smirnov against the mixture's CDF; 1.63 / sqrt(n) is the 1% critical value.
    ts = t.sort().values
    empirical = torch.arange(1, len(ts) + 1, dtype=F64) / len(ts)
    assert (empirical - _mixture_cdf(ts, share, start)).abs().max() < 1.63 / len(ts) ** 0.5
    # The map is monotone in u, so each sample's t is its own mixture draw (no batch slice).
    assert torch.equal(t[u.argsort()], ts)
    assert (t >= start).double().mean().item() == pytest.approx(share + (1 - share) * (1 - start), abs=0.005)


def test_training_t_share_zero_is_the_uniform_draw_itself():
    u = torch.rand(1000, generator=torch.Generator().manual_seed(2))
    assert torch.equal(training_t(u, 0.0, 0.85), u)
    schedule = get_schedule("cosine")
    x0, _ = _batch()
    seen = []
    def net(z, tt):
        seen.append(tt)
        return torch.zeros_like(z)
    for share in (0.0, 1.0):
        diffusion_loss(net, x0, schedule, "v", high_noise_share=share, high_noise_from=0.9,
                       generator=torch.Generator().manual_seed(3))
    uniform = torch.rand(6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(seen[0], uniform)  # the old stream: t = the first draw
    torch.testing.assert_close(seen[1], 0.9 + 0.1 * uniform)


@pytest.mark.parametrize("share,start", [(-0.1, 0.85), (1.5, 0.85), (0.5, 1.0), (0.5, -0.2)])
def test_training_t_rejects_bad_values(share, start):
    with pytest.raises(PixcadeError, match="high-noise"):
        training_t(torch.rand(4), share, start)
