"""pixcade side of the benchmark: training steps, stage sampling and text encoding.

``opts`` switch pixcade's speed features so the table can show what each one buys:
``bf16`` (autocast, training only: sampling runs in fp32, as the peers' does), ``cl``
(channels_last), ``compile`` (torch.compile of the U-Net), ``ckpt`` (gradient
checkpointing), ``foreach`` (the non-fused AdamW, for comparison).
"""

from __future__ import annotations

from typing import Callable

import torch

from common import autocast, make_batch
from specs import Suite, UNetSpec

from pixcade.diffusion.settings import SamplingSettings
from pixcade.nn.configs import UNetConfig
from pixcade.stage import Stage, StageConfig

NAME = "pixcade"
# The stage defaults pixcade ships (SamplingSettings): DPM-Solver++(2M).
SAMPLER = SamplingSettings().sampler


def default_steps(which: str) -> int:
    return SamplingSettings().steps


def unet_config(spec: UNetSpec, text_dim: int, opts: frozenset[str] = frozenset()) -> UNetConfig:
    return UNetConfig(
        channels=spec.channels, channel_mult=spec.channel_mult, num_res_blocks=spec.num_res_blocks,
        attn_levels=spec.attn_levels, cross_attn_levels=spec.cross_attn_levels, head_dim=spec.head_dim,
        text_dim=text_dim, lowres_cond=spec.is_sr, gradient_checkpointing="ckpt" in opts,
    )


def stage(spec: UNetSpec, suite: Suite, device: str, opts: frozenset[str] = frozenset()) -> Stage:
    cfg = StageConfig(
        name="sr" if spec.is_sr else "base", resolution=spec.resolution,
        lowres_resolution=spec.lowres_resolution, unet=unet_config(spec, suite.text_dim, opts),
    )
    st = Stage(cfg)
    st.net.to(device)
    if "cl" in opts:
        st.net.to(memory_format=torch.channels_last)
    if "compile" in opts:
        st.net = torch.compile(st.net)
    return st


def train_step(suite: Suite, which: str, device: str, opts: frozenset[str]) -> tuple[Callable[[], None], int]:
    spec = suite.sr if which == "sr" else suite.base
    batch = suite.sr_train_batch if which == "sr" else suite.train_batch
    st = stage(spec, suite, device, opts)
    n_params = sum(p.numel() for p in st.net.parameters())
    fused = "foreach" not in opts
    opt = torch.optim.AdamW(st.net.parameters(), lr=1e-4, fused=fused, foreach=None if fused else True)
    data = make_batch(spec, batch, suite, device)
    images, lowres = data["images"], data.get("lowres")
    if "cl" in opts:
        images = images.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with autocast(device, "bf16" in opts):
            loss = st.loss(images, data["text_emb"], data["text_mask"], lowres).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, n_params


def stage_sampler(suite: Suite, which: str, device: str, steps: int, opts: frozenset[str],
                  guidance: float) -> Callable[[], torch.Tensor]:
    spec = suite.sr if which == "sr" else suite.base
    st = stage(spec, suite, device, opts)
    st.net.eval()
    data = make_batch(spec, suite.sample_batch, suite, device)
    gen = torch.Generator(device).manual_seed(0)

    # fp32, as the peers sample here (pixcade's default, auto, is bf16 where it is native).
    def run() -> torch.Tensor:
        return st.sample(data["text_emb"], data["text_mask"], data.get("lowres"), sampler=SAMPLER,
                         steps=steps, guidance_weight=guidance, generator=gen, dtype="fp32")

    return run


def text_encoder(device: str) -> Callable[[list[str]], object]:
    from pixcade.text.encoders import load_text_encoder

    enc = load_text_encoder("minilm", device=device)
    return lambda prompts: enc.encode(prompts, batch_size=32)
