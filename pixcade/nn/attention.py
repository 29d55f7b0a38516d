"""Attention layers: spatial self-attention, cross-attention to text tokens, attention pooling,
and a transformer block over the text tokens.

All go through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels where
the device has them). Text masks are bool [B, L], True = real token; the caller guarantees
each row has at least one True (the U-Net prepends a learned null token).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled()


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-head attention on [B, N, heads * d] tensors; mask is bool [B, L] over the keys."""
    q, k, v = (x.unflatten(-1, (heads, -1)).transpose(1, 2) for x in (q, k, v))
    if mask is not None:
        mask = mask[:, None, None, :]
    dtype = q.dtype
    if q.device.type == "cpu" and (dtype != torch.float32 or _cpu_autocast()):
        # PyTorch's CPU attention kernels are 4-40x slower in half precision than in fp32
        # (forward + backward, torch 2.13): under bf16 autocast they took a fifth of a CPU
        # training step. So attention runs in fp32 there (autocast would recast it).
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.to(dtype).transpose(1, 2).flatten(2)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, H*W, C]


def _to_image(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    # A channels-last view, no copy: matches what convs want under channels_last.
    return tokens.unflatten(1, (h, w)).permute(0, 3, 1, 2)


class SelfAttention(nn.Module):
    def __init__(self, ch: int, head_dim: int, groups: int):
        super().__init__()
        self.heads = ch // head_dim
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.out = nn.Linear(ch, ch)
        nn.init.zeros_(self.out.weight)  # start as the identity: a deep net trains stably
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        q, k, v = self.qkv(_to_tokens(self.norm(x))).chunk(3, dim=-1)
        return x + _to_image(self.out(attend(q, k, v, self.heads)), h, w)


class CrossAttention(nn.Module):
    """Image positions attend to the (LayerNormed) text tokens; padding is masked out."""

    def __init__(self, ch: int, text_dim: int, head_dim: int, groups: int):
        super().__init__()
        self.heads = ch // head_dim
        self.norm = nn.GroupNorm(groups, ch)
        self.text_norm = nn.LayerNorm(text_dim)
        self.q = nn.Linear(ch, ch)
        self.kv = nn.Linear(text_dim, 2 * ch)
        self.out = nn.Linear(ch, ch)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        q = self.q(_to_tokens(self.norm(x)))
        k, v = self.kv(self.text_norm(text)).chunk(2, dim=-1)
        return x + _to_image(self.out(attend(q, k, v, self.heads, mask)), h, w)


class AttentionPool(nn.Module):
    """[B, L, text_dim] tokens -> [B, out_dim]: a learned query attends over the real tokens."""

    def __init__(self, text_dim: int, out_dim: int, head_dim: int):
        super().__init__()
        # Multi-head when the encoder's width allows it; a single head otherwise.
        self.heads = text_dim // head_dim if text_dim % head_dim == 0 else 1
        self.norm = nn.LayerNorm(text_dim)
        self.query = nn.Parameter(torch.randn(text_dim) * text_dim**-0.5)
        self.kv = nn.Linear(text_dim, 2 * text_dim)
        self.out = nn.Linear(text_dim, out_dim)

    def forward(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(self.norm(text)).chunk(2, dim=-1)
        q = self.query.to(k.dtype).expand(text.shape[0], 1, -1)
        return self.out(attend(q, k, v, self.heads, mask)[:, 0])


class TextBlock(nn.Module):
    """A pre-LayerNorm transformer block over the text tokens; padding is masked out as keys.

    Both residual branches end in a zero-initialised projection, so a fresh block is the
    identity and a trained U-Net can take blocks on by fine-tuning without a jump.
    """

    def __init__(self, dim: int, head_dim: int, mlp_mult: int = 4):
        super().__init__()
        self.heads = dim // head_dim if dim % head_dim == 0 else 1
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_mult * dim), nn.GELU(), nn.Linear(mlp_mult * dim, dim))
        for layer in (self.out, self.mlp[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(text)).chunk(3, dim=-1)
        text = text + self.out(attend(q, k, v, self.heads, mask))
        return text + self.mlp(self.norm2(text))
