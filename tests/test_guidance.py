"""Thresholding and classifier-free guidance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixcade.diffusion.guidance import (
    _percentile, dynamic_threshold, guided_denoiser, parse_threshold, static_threshold,
)
from pixcade.diffusion.parameterization import PARAMETERIZATIONS, per_sample, to_eps, to_x0
from pixcade.diffusion.schedules import alpha_sigma, get_schedule
from pixcade.errors import PixcadeError

F64 = torch.float64


def test_percentile_matches_numpy():
    x = torch.randn(3, 1001, dtype=F64).abs()
    for p in (50.0, 99.0, 99.5, 100.0, 0.1):
        np.testing.assert_allclose(_percentile(x, p).numpy(), np.percentile(x.numpy(), p, axis=1))


def test_dynamic_leaves_x0_untouched_when_s_at_most_one():
    x0 = torch.rand(4, 3, 8, 8) * 1.8 - 0.9  # |x0| < 0.9
    assert torch.equal(dynamic_threshold(x0), x0)
    # s <= 1 even though a few values (< 0.5%) lie beyond 1: still untouched.
    x0 = x0.clone()
    x0[:, 0, 0, 0] = 3.0
    assert torch.equal(dynamic_threshold(x0), x0)


def test_dynamic_maps_into_unit_range_when_s_above_one():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 16, 16, generator=g, dtype=F64) * 2.0
    x0[1] *= 0.1  # sample 1: s ~ 0.5
    out = dynamic_threshold(x0, percentile=99.0)
    s = np.percentile(x0[0].abs().numpy(), 99.0)
    assert s > 1
    torch.testing.assert_close(out[0], x0[0].clamp(-s, s) / s)
    assert out[0].abs().max().item() == pytest.approx(1.0)
    assert torch.equal(out[1], x0[1])  # per sample


def test_static():
    x0 = torch.tensor([-3.0, -0.5, 0.5, 2.0])
    assert static_threshold(x0).tolist() == [-1.0, -0.5, 0.5, 1.0]


def test_parse_threshold():
    assert parse_threshold("none") is None
    assert parse_threshold("static") is static_threshold
    assert parse_threshold(" dynamic ") is dynamic_threshold
    # "dynamic:P" uses P: a sample with 1% of values at 5 and the rest 1.5.
    x0 = torch.full((1, 100), 1.5)
    x0[0, :1] = 5.0
    assert parse_threshold("dynamic:99.5")(x0).max().item() == pytest.approx(1.0)
    assert parse_threshold("dynamic:98")(x0)[0, 0].item() == pytest.approx(1.0)
    assert parse_threshold("dynamic:98")(x0)[0, 5].item() == pytest.approx(1.0)
    assert parse_threshold("dynamic:99.5")(x0)[0, 5].item() < 1.0
    for bad in ("", "dyn", "dynamic:", "dynamic:0", "dynamic:101", "dynamic:abc",
                "dynamic:nan", "static:2", "none:1", "Static"):
        with pytest.raises(PixcadeError, match="threshold"):
            parse_threshold(bad)
    with pytest.raises(PixcadeError, match="percentile"):
        dynamic_threshold(x0, percentile=0.0)


class FakeNet:
    """Linear in z and in the conditioning, recording every call's batch size."""

    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, z, t, emb, mask):
        self.batches.append(z.shape[0])
        scale = emb.sum(dim=1) * mask.float().mean(dim=1)  # [B]
        return 0.3 * z + per_sample(scale + t, z)


def _inputs(b=3):
    g = torch.Generator().manual_seed(0)
    cond = {"emb": torch.randn(b, 4, generator=g, dtype=F64), "mask": torch.ones(b, 4, dtype=torch.bool)}
    uncond = {"emb": torch.zeros(b, 4, dtype=F64), "mask": torch.zeros(b, 4, dtype=torch.bool)}
    z = torch.randn(b, 2, 3, 3, generator=g, dtype=F64)
    t = torch.full((b,), 0.4, dtype=F64)
    return cond, uncond, z, t


@pytest.mark.parametrize("param", PARAMETERIZATIONS)
def test_guidance_is_one_forward_of_2b_and_equals_eps_guidance(param):
    schedule, w = get_schedule("cosine"), 4.0
    cond, uncond, z, t = _inputs()
    net = FakeNet()
    x0 = guided_denoiser(net, schedule, param, cond, uncond, w, "none")(z, t)
    assert net.batches == [6]
    # The paper's formula, literally in eps space, from two separate passes.
    alpha, sigma = alpha_sigma(per_sample(schedule.log_snr(t), z))
    eps_c = to_eps(net(z, t, **cond), z, alpha, sigma, param)
    eps_u = to_eps(net(z, t, **uncond), z, alpha, sigma, param)
    eps = w * eps_c + (1 - w) * eps_u
    torch.testing.assert_close(x0, to_x0(eps, z, alpha, sigma, "eps"))
    assert not torch.allclose(x0, to_x0(net(z, t, **cond), z, alpha, sigma, param))


@pytest.mark.parametrize("param", PARAMETERIZATIONS)
def test_weight_one_or_no_uncond_is_the_conditional_prediction(param):
    schedule = get_schedule("linear")
    cond, uncond, z, t = _inputs()
    alpha, sigma = alpha_sigma(per_sample(schedule.log_snr(t), z))
    expect = to_x0(FakeNet()(z, t, **cond), z, alpha, sigma, param)
    for u, w in ((uncond, 1.0), (None, 7.0)):
        net = FakeNet()
        x0 = guided_denoiser(net, schedule, param, cond, u, w, None)(z, t)
        assert net.batches == [3]
        torch.testing.assert_close(x0, expect)


def test_threshold_applies_to_the_guided_x0():
    schedule = get_schedule("cosine")
    cond, uncond, z, t = _inputs()
    cond["emb"] = cond["emb"] * 50
    raw = guided_denoiser(FakeNet(), schedule, "x0", cond, uncond, 3.0, "none")(z, t)
    assert raw.abs().max() > 1
    for spec, fn in (("static", static_threshold), ("dynamic", dynamic_threshold)):
        out = guided_denoiser(FakeNet(), schedule, "x0", cond, uncond, 3.0, spec)(z, t)
        torch.testing.assert_close(out, fn(raw))
    custom = guided_denoiser(FakeNet(), schedule, "x0", cond, uncond, 3.0, lambda x: x * 0)(z, t)
    assert torch.equal(custom, torch.zeros_like(raw))


def test_guidance_errors():
    schedule = get_schedule("cosine")
    cond, uncond, _, _ = _inputs()
    with pytest.raises(PixcadeError, match="keys"):
        guided_denoiser(FakeNet(), schedule, "eps", cond, {"emb": uncond["emb"]}, 3.0, "none")
    with pytest.raises(PixcadeError, match="parameterization"):
        guided_denoiser(FakeNet(), schedule, "score", cond, uncond, 3.0, "none")
    with pytest.raises(PixcadeError, match="threshold"):
        guided_denoiser(FakeNet(), schedule, "eps", cond, uncond, 3.0, "dynamic:200")
