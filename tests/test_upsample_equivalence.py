"""The CPU Upsample (four 2x2 phase convolutions) equals nearest-x2 + 3x3 conv, values and gradients."""

import pytest
import torch

from pixcade.nn.layers import Upsample


@pytest.mark.parametrize("shape", [(2, 8, 1, 1), (2, 8, 4, 4), (1, 16, 5, 3)])
def test_matches_the_direct_form_in_value_and_gradient(shape):
    torch.manual_seed(0)
    up = Upsample(shape[1], 6)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    up.double()
    out = up(x)
    ref = up.direct(x)
    assert out.shape == (shape[0], 6, 2 * shape[2], 2 * shape[3])
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, up.conv.weight, up.conv.bias], g)
    ref_grads = torch.autograd.grad(ref, [x, up.conv.weight, up.conv.bias], g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_under_bf16_autocast_it_stays_close_to_fp32():
    torch.manual_seed(0)
    up = Upsample(32, 16)
    x = torch.randn(2, 32, 8, 8)
    ref = up.direct(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = up(x)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()
