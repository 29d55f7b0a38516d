"""CPU attention runs in fp32 even under bf16 autocast or on bf16 inputs (speed and accuracy)."""

import torch
import torch.nn.functional as F

from pixcade.nn.attention import attend


def _reference(q, k, v, heads, mask):
    q, k, v = (x.float().unflatten(-1, (heads, -1)).transpose(1, 2) for x in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    return out.transpose(1, 2).flatten(2)


def _inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 32, generator=g).to(dtype) for n in (6, 5, 5))
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    return q, k, v, mask


def test_under_cpu_autocast_attention_is_exactly_the_fp32_result():
    q, k, v, mask = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attend(q, k, v, heads=4, mask=mask)
    assert out.dtype == torch.float32
    assert torch.equal(out, _reference(q, k, v, 4, mask))


def test_bf16_inputs_are_attended_in_fp32_and_returned_in_bf16():
    q, k, v, mask = _inputs(torch.bfloat16)
    out = attend(q, k, v, heads=4, mask=mask)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, _reference(q, k, v, 4, mask).to(torch.bfloat16))


def test_gradients_flow_back_in_the_input_dtype():
    q, k, v, mask = _inputs(torch.bfloat16)
    q.requires_grad_(True)
    attend(q, k, v, heads=4, mask=mask).float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad.float()).all()
