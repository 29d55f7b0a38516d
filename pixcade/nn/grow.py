"""Growing a trained U-Net by one full-resolution level (progressive growing of a base stage).

A U-Net trained at resolution R becomes one for 2R: its levels move one step down and keep
their weights, so each still sees the drawing at the pixel scale it was trained on (a fully
convolutional net merely run at 2R sees every feature at twice its trained size). A new top
level works at 2R. It starts as a pass-through, exactly:

    grown(x) == old net with conv_in -> avgpool2(conv_in(x)), conv_out -> conv_out(nearest2(h))

(group norm and swish commute with nearest upsampling), so training starts from the old
network's behaviour on the 2x2-averaged input, not from a random top level. With the noise
schedule's SNR divided by 4 at 2R (``cosine:0.25``), that average carries at each t the noise
the old levels were trained on.

The pass-through: the new level's ResNet blocks have zeroed output convolutions (each then
scales its input by 1/sqrt 2, as every ResNet block's sum does); the new downsampling
convolution averages each channel's 2x2 block and undoes those scalings; the new upsampling
convolution copies each channel (nearest neighbour); the new top UBlock's first skip
convolution passes the upsampled path through and drops the skip connection.
"""

from __future__ import annotations

import dataclasses
import math
import re

import torch

from pixcade.nn.configs import UNetConfig
from pixcade.nn.unet import EfficientUNet

# The new level's first convolutions keep a random initialisation (their output is zeroed
# further on, but their gradients are not); a fixed seed makes a grown export reproducible
# whatever the caller's random state.
GROW_SEED = 0


def grown_config(cfg: UNetConfig) -> UNetConfig:
    """``cfg`` with a new level 0 of level 0's channels and ResNet blocks and no attention;
    the old levels (and their attention) one index lower."""
    return dataclasses.replace(
        cfg,
        channel_mult=(cfg.channel_mult[0], *cfg.channel_mult),
        num_res_blocks=(cfg.num_res_blocks[0], *cfg.num_res_blocks),
        attn_levels=tuple(i + 1 for i in cfg.attn_levels),
        cross_attn_levels=tuple(i + 1 for i in cfg.cross_attn_levels),
    )


def _moved(key: str) -> str:
    """A tensor's name in the grown net: DBlock i becomes DBlock i + 1. UBlocks keep their
    index (the list runs bottom-up, and the new top UBlock is appended)."""
    m = re.fullmatch(r"down\.(\d+)\.(.+)", key)
    return f"down.{int(m.group(1)) + 1}.{m.group(2)}" if m else key


def grow_state(old: EfficientUNet) -> tuple[UNetConfig, dict[str, torch.Tensor]]:
    """The grown config and a full state dict for it: ``old``'s tensors moved one level down,
    the new top level as the pass-through of the module docstring. (A network has every
    tensor of its config; reading weights into it, `pipeline.saving.load_weights`, is where
    a file that lacks one is refused.)"""
    new_cfg = grown_config(old.config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(GROW_SEED)
        net = EfficientUNet(new_cfg)
    net.load_state_dict({_moved(k): v for k, v in old.state_dict().items()}, strict=False)
    _pass_through(net, len(old.config.channel_mult))
    return new_cfg, net.state_dict()


@torch.no_grad()
def _pass_through(net: EfficientUNet, old_levels: int) -> None:
    top_down, top_up = net.down[0], net.up[old_levels]
    for block in (*top_down.res, *top_up.res):
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()
    # Each identity-skip block halves the variance: x -> x / sqrt 2.
    down_gain = math.sqrt(2) ** len(top_down.res)
    _diagonal(net.down[1].down.conv, {(r, c): 0.25 * down_gain for r in (1, 2) for c in (1, 2)})
    _diagonal(net.up[old_levels - 1].up.conv, {(1, 1): 1.0})
    first = top_up.res[0].skip  # 1x1 conv over [upsampled path, skip connection]
    first.weight.zero_()
    first.bias.zero_()
    ch = first.out_channels
    first.weight[:, :ch, 0, 0] = torch.eye(ch) * math.sqrt(2) ** len(top_up.res)


def _diagonal(conv: torch.nn.Conv2d, taps: dict[tuple[int, int], float]) -> None:
    """Each output channel reads only its own input channel, at the given kernel taps. For the
    stride-2 3x3 downsampling convolution (padding 1), taps (1..2, 1..2) are output pixel
    (i, j)'s input block rows 2i..2i+1, columns 2j..2j+1."""
    conv.weight.zero_()
    conv.bias.zero_()
    idx = torch.arange(conv.out_channels)
    for (r, c), w in taps.items():
        conv.weight[idx, idx, r, c] = w
