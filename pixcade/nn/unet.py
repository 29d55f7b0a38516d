"""The Efficient U-Net of Imagen (appendix B and F), text-conditioned, optionally for super-resolution.

Level i works at resolution / 2**i with ``config.level_channels[i]`` channels. Going down,
each DBlock downsamples *before* its ResNet blocks; going up, each UBlock upsamples *after*
them (the paper's Efficient U-Net ordering: the expensive blocks run at low resolution).
Conditioning: timestep (+ augmentation level) embedding plus the attention-pooled text
embedding feed every ResNet block; cross-attention reads the text tokens where configured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pixcade.errors import PixcadeError
from pixcade.nn.attention import AttentionPool, CrossAttention, SelfAttention, TextBlock
from pixcade.nn.configs import UNetConfig
from pixcade.nn.layers import Downsample, ResBlock, ScalarEmbedding, Upsample, sinusoidal_embedding

# Sin/cos features of a token's index that the learnt text position map reads.
TEXT_POSITION_FEATURES = 64
# Guidance weights (about 1..10) are multiplied by this before their sin/cos features: the
# fastest feature then turns ~10 radians per unit of w, the slowest barely moves over the
# range, so nearby weights embed alike and the whole range is told apart.
GUIDANCE_EMBEDDING_SCALE = 10.0


class _Block(nn.Module):
    """ResNet blocks, then optional self-attention and cross-attention at one level."""

    def __init__(self, cfg: UNetConfig, level: int, in_ch: int, out_ch: int):
        super().__init__()
        g, e = cfg.norm_groups, cfg.emb_dim
        n = cfg.num_res_blocks[level]
        self.res = nn.ModuleList(
            ResBlock(in_ch if i == 0 else out_ch, out_ch, e, g, cfg.dropout) for i in range(n)
        )
        self.attn = SelfAttention(out_ch, cfg.head_dim, g) if level in cfg.attn_levels else None
        self.cross = (
            CrossAttention(out_ch, cfg.text_dim, cfg.head_dim, g) if level in cfg.cross_attn_levels else None
        )

    def body(self, h: torch.Tensor, emb: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.res:
            h = block(h, emb)
        if self.attn is not None:
            h = self.attn(h)
        if self.cross is not None:
            h = self.cross(h, text, mask)
        return h


class DBlock(_Block):
    def __init__(self, cfg: UNetConfig, level: int, in_ch: int, out_ch: int):
        super().__init__(cfg, level, in_ch, out_ch)
        self.down = Downsample(in_ch, in_ch) if level > 0 else None

    def forward(self, h, emb, text, mask):
        if self.down is not None:
            h = self.down(h)
        return self.body(h, emb, text, mask)


class UBlock(_Block):
    def __init__(self, cfg: UNetConfig, level: int, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__(cfg, level, in_ch + skip_ch, out_ch)
        up_ch = cfg.level_channels[level - 1] if level > 0 else 0
        self.up = Upsample(out_ch, up_ch) if level > 0 else None

    def forward(self, h, skip, emb, text, mask):
        if skip is not None:
            h = torch.cat([h, skip], dim=1)
        h = self.body(h, emb, text, mask)
        return self.up(h) if self.up is not None else h


class EfficientUNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        chs = cfg.level_channels
        levels = len(chs)
        self.time_emb = ScalarEmbedding(cfg.channels, cfg.emb_dim)
        self.aug_emb = ScalarEmbedding(cfg.channels, cfg.emb_dim) if cfg.lowres_cond else None
        self.guidance_emb = None
        if cfg.guidance_conditioned:
            self.guidance_emb = ScalarEmbedding(cfg.channels, cfg.emb_dim, scale=GUIDANCE_EMBEDDING_SCALE)
            nn.init.zeros_(self.guidance_emb.mlp[-1].weight)  # adds nothing until trained
            nn.init.zeros_(self.guidance_emb.mlp[-1].bias)
        # Always prepended to the text tokens: attention is never over an empty set, and a
        # row with no real tokens (the unconditional pass) sees only this learned embedding.
        self.null_text = nn.Parameter(torch.randn(1, 1, cfg.text_dim) * 0.02)
        self.text_pool = AttentionPool(cfg.text_dim, cfg.emb_dim, cfg.head_dim)
        # A map from sinusoidal features rather than a table of learnt vectors: no maximum text
        # length to fix in the config. Zero-initialised for the same reason as coord_in below.
        self.text_pos = nn.Linear(TEXT_POSITION_FEATURES, cfg.text_dim, bias=False) if cfg.text_positions else None
        if self.text_pos is not None:
            nn.init.zeros_(self.text_pos.weight)
        self.text_blocks = nn.ModuleList(TextBlock(cfg.text_dim, cfg.head_dim) for _ in range(cfg.text_layers))

        in_ch = cfg.in_channels * (2 if cfg.lowres_cond else 1)
        self.conv_in = nn.Conv2d(in_ch, chs[0], 3, padding=1)
        # A separate, zero-initialised convolution rather than 2 more conv_in channels: the
        # network starts out exactly as without coordinates, so a trained model can take them
        # on by fine-tuning (`train.init_from`) without a jump in its outputs.
        self.coord_in = nn.Conv2d(2, chs[0], 3, padding=1, bias=False) if cfg.coord_channels else None
        if self.coord_in is not None:
            nn.init.zeros_(self.coord_in.weight)
        self.down = nn.ModuleList(DBlock(cfg, i, chs[max(i - 1, 0)], chs[i]) for i in range(levels))
        # The bottom UBlock continues straight from the bottom DBlock; the others also take
        # the DBlock output of their level as a skip connection.
        self.up = nn.ModuleList(
            UBlock(cfg, i, chs[i], chs[i] if i < levels - 1 else 0, chs[i]) for i in reversed(range(levels))
        )
        self.norm_out = nn.GroupNorm(cfg.norm_groups, chs[0])
        self.conv_out = nn.Conv2d(chs[0], cfg.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # predicts 0 at init: a sane first loss
        nn.init.zeros_(self.conv_out.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_emb: torch.Tensor,
        text_mask: torch.Tensor,
        lowres: torch.Tensor | None = None,
        aug_t: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw network output shaped like ``x``.

        ``t`` and ``aug_t`` are [B] in [0, 1]; ``text_mask`` is bool [B, L], a row of all
        False is the unconditional input. ``aug_t`` defaults to 0 (no augmentation).
        ``guidance`` is the guidance weight [B] of a ``guidance_conditioned`` U-Net (required
        there, refused elsewhere).
        """
        t, text_mask, aug_t = self._check_inputs(x, t, text_emb, text_mask, lowres, aug_t)
        guidance = self._check_guidance(guidance, x)
        b = x.shape[0]
        if self.text_pos is not None:
            text_emb = text_emb + self.text_pos(token_positions(text_emb.shape[1], x.device)).to(text_emb.dtype)
        text = text_emb.masked_fill(~text_mask[..., None], 0.0)  # padding can't leak, even if NaN
        text = torch.cat([self.null_text.to(text.dtype).expand(b, -1, -1), text], dim=1)
        mask = torch.cat([text_mask.new_ones(b, 1), text_mask], dim=1)
        for block in self.text_blocks:  # over the null token too: no row is empty
            text = block(text, mask)

        emb = self.time_emb(t) + self.text_pool(text, mask)
        if self.guidance_emb is not None:
            emb = emb + self.guidance_emb(guidance)
        if self.aug_emb is not None:
            emb = emb + self.aug_emb(aug_t)
            x = torch.cat([x, lowres.to(x.dtype)], dim=1)

        h = self.conv_in(x)
        if self.coord_in is not None:
            h = h + self.coord_in(pixel_coords(x.shape[-2], x.shape[-1], x.device, h.dtype))
        skips = []
        for block in self.down:
            h = self._run(block, h, emb, text, mask)
            skips.append(h)
        skips[-1] = None  # the bottom UBlock's input already is that tensor
        for block, skip in zip(self.up, reversed(skips)):
            h = self._run(block, h, skip, emb, text, mask)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out.to(x.dtype)

    def _run(self, block: nn.Module, *args: torch.Tensor | None) -> torch.Tensor:
        if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _check_inputs(self, x, t, text_emb, text_mask, lowres, aug_t):
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise PixcadeError(f"U-Net expects images [B, {cfg.in_channels}, H, W], got {tuple(x.shape)}")
        b, _, h, w = x.shape
        f = cfg.downsample_factor
        if h % f or w % f:
            raise PixcadeError(
                f"image size {h}x{w} is not divisible by {f} (the U-Net has {len(cfg.channel_mult)} levels)"
            )
        t = self._check_scalar("t", t, b, x.device)
        if text_emb.ndim != 3 or text_emb.shape[0] != b:
            raise PixcadeError(f"text embeddings must be [{b}, L, D] to match {b} images, got {tuple(text_emb.shape)}")
        if text_emb.shape[2] != cfg.text_dim:
            raise PixcadeError(
                f"text embedding width {text_emb.shape[2]} does not match the U-Net's text_dim {cfg.text_dim}"
            )
        if tuple(text_mask.shape) != tuple(text_emb.shape[:2]):
            raise PixcadeError(f"text mask {tuple(text_mask.shape)} does not match text embeddings {tuple(text_emb.shape)}")
        text_mask = text_mask.bool()
        if not cfg.lowres_cond:
            if lowres is not None or aug_t is not None:
                raise PixcadeError("this U-Net is not a super-resolution model: it takes no lowres/aug_t")
            return t, text_mask, None
        if lowres is None:
            raise PixcadeError("super-resolution U-Net needs the upsampled low-res image (lowres)")
        if tuple(lowres.shape) != tuple(x.shape):
            raise PixcadeError(f"lowres must be upsampled to the image shape {tuple(x.shape)}, got {tuple(lowres.shape)}")
        aug_t = torch.zeros(b, device=x.device) if aug_t is None else self._check_scalar("aug_t", aug_t, b, x.device)
        return t, text_mask, aug_t

    def _check_guidance(self, guidance: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
        if not self.config.guidance_conditioned:
            if guidance is not None:
                raise PixcadeError("this U-Net is not guidance-conditioned: it takes no guidance weight")
            return None
        if guidance is None:
            raise PixcadeError("a guidance-conditioned U-Net needs the guidance weight (guidance)")
        return self._check_scalar("guidance", guidance, x.shape[0], x.device)

    @staticmethod
    def _check_scalar(name: str, v: torch.Tensor | float, b: int, device: torch.device) -> torch.Tensor:
        v = torch.as_tensor(v, device=device)
        if v.ndim == 0:
            v = v.expand(b)
        if tuple(v.shape) != (b,):
            raise PixcadeError(f"{name} must have shape [{b}], got {tuple(v.shape)}")
        return v


def pixel_coords(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[1, 2, H, W]: x then y of each pixel centre, -1 at the left/top edge, +1 at the right/bottom,
    so a position means the same at every resolution."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 - 1
    grid = torch.stack([xs.expand(height, width), ys[:, None].expand(height, width)])
    return grid[None].to(dtype)


def token_positions(length: int, device: torch.device) -> torch.Tensor:
    """[L, TEXT_POSITION_FEATURES] sin/cos features of token indices 0 .. L-1 (float32)."""
    return sinusoidal_embedding(torch.arange(length, device=device), TEXT_POSITION_FEATURES, scale=1.0)


def count_parameters(config: UNetConfig) -> int:
    """Parameters of the U-Net a config describes, counted on the meta device (no memory)."""
    with torch.device("meta"):
        net = EfficientUNet(config)
    return sum(p.numel() for p in net.parameters())
