"""U-Net configurations: the dataclass saved beside the weights, and the named presets.

The paper presets (Imagen appendix F) are for counting and for scaling up on real
hardware; the tiny ones run the tests, the small ones train the shipped shapes model on CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pixcade.errors import PixcadeError
from pixcade.schema import from_json


@dataclass
class UNetConfig:
    in_channels: int = 3
    out_channels: int = 3
    # Channels of level i are channels * channel_mult[i]; level i works at resolution / 2**i.
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4)
    # ResNet blocks per level, used in both the DBlock and the UBlock of that level (one
    # number: the same at every level).
    num_res_blocks: int | tuple[int, ...] = (2, 2, 2)
    # Levels (0 = full resolution) whose blocks end in self-attention / cross-attention.
    attn_levels: tuple[int, ...] = ()
    cross_attn_levels: tuple[int, ...] = ()
    # Channels per attention head (a level's channels must be a multiple where it attends).
    head_dim: int = 64
    # Width of the text encoder's token embeddings.
    text_dim: int = 384
    # Super-resolution: the (upsampled) low-res image is concatenated to the input and
    # the noise-augmentation level is embedded beside the timestep.
    lowres_cond: bool = False
    # Two extra input channels holding each pixel's (x, y) in [-1, 1] (CoordConv), through a
    # zero-initialised convolution, so absolute positions are learnable without relying on
    # the zero padding. Not in Imagen. Refused with crop training: a crop's coordinates lie.
    coord_channels: bool = False
    # A learnt, zero-initialised function of each text token's index added to its embedding
    # before pooling and cross-attention, which are blind to order, for encoders whose
    # states carry word order weakly. Not in Imagen.
    text_positions: bool = False
    # Trainable pre-LN transformer blocks (zero-initialised residuals) over the text tokens
    # before the U-Net reads them, so tokens can combine first (e.g. a relation word with
    # the object it binds). Not in Imagen, whose frozen T5-XXL relates the words itself.
    text_layers: int = 0
    # The classifier-free guidance weight w as an input, embedded beside the timestep through a
    # zero-initialised layer: a guidance-distilled student (Meng et al. 2023) starts as its
    # teacher's conditional output at every w, and needs one pass where guidance took two.
    # Not in Imagen.
    guidance_conditioned: bool = False
    # Dropout inside the ResNet blocks.
    dropout: float = 0.0
    # Group-norm groups (every level's channels must be a multiple).
    norm_groups: int = 32
    # Recompute block activations in the backward pass: memory for compute, same gradients.
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        if isinstance(self.num_res_blocks, int):
            self.num_res_blocks = (self.num_res_blocks,) * len(self.channel_mult)
        self.num_res_blocks = tuple(int(n) for n in self.num_res_blocks)
        self.attn_levels = tuple(sorted(int(i) for i in self.attn_levels))
        self.cross_attn_levels = tuple(sorted(int(i) for i in self.cross_attn_levels))
        self._validate()

    def _validate(self) -> None:
        levels = len(self.channel_mult)
        if levels == 0 or any(m < 1 for m in self.channel_mult):
            raise PixcadeError(f"channel_mult must be non-empty positive ints, got {self.channel_mult}")
        if len(self.num_res_blocks) != levels or any(n < 1 for n in self.num_res_blocks):
            raise PixcadeError(
                f"num_res_blocks needs one positive count per level ({levels}), got {self.num_res_blocks}"
            )
        for name in ("attn_levels", "cross_attn_levels"):
            bad = [i for i in getattr(self, name) if not 0 <= i < levels]
            if bad:
                raise PixcadeError(f"{name} {bad} out of range for {levels} levels")
        for name in ("in_channels", "out_channels", "channels", "head_dim", "text_dim", "norm_groups"):
            if getattr(self, name) < 1:
                raise PixcadeError(f"{name} must be positive, got {getattr(self, name)}")
        if self.text_layers < 0:
            raise PixcadeError(f"text_layers must be >= 0, got {self.text_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise PixcadeError(f"dropout must be in [0, 1), got {self.dropout}")
        for i, c in enumerate(self.level_channels):
            if c % self.norm_groups:
                raise PixcadeError(f"level {i} has {c} channels, not divisible by norm_groups={self.norm_groups}")
            attends = i in self.attn_levels or i in self.cross_attn_levels
            if attends and c % self.head_dim:
                raise PixcadeError(f"level {i} has {c} channels, not divisible by head_dim={self.head_dim}")

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.channels * m for m in self.channel_mult)

    @property
    def emb_dim(self) -> int:
        """Width of the timestep (+ pooled text, + augmentation level) embedding."""
        return 4 * self.channels

    @property
    def downsample_factor(self) -> int:
        """Height and width of the input must be multiples of this."""
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetConfig":
        return from_json(cls, d, "U-Net config")


T5_XXL_DIM = 4096
MINILM_DIM = 384

PRESETS: dict[str, UNetConfig] = {
    # The paper gives widths and sizes, not every block count: the counts below are ours,
    # chosen (deeper at low resolution) to land on the reported parameter totals.
    # Imagen's 64x64 base model (~2B): 512 channels, x(1,2,3,4), attention at 32, 16, 8 px.
    "base64": UNetConfig(
        channels=512, channel_mult=(1, 2, 3, 4), num_res_blocks=(3, 4, 5, 6),
        attn_levels=(1, 2, 3), cross_attn_levels=(1, 2, 3), text_dim=T5_XXL_DIM,
    ),
    # Efficient U-Net 64 -> 256 (~600M): blocks moved to low resolution, attention at the bottom.
    "sr256": UNetConfig(
        channels=128, channel_mult=(1, 2, 4, 8), num_res_blocks=(2, 4, 10, 10),
        attn_levels=(3,), cross_attn_levels=(3,), text_dim=T5_XXL_DIM, lowres_cond=True,
    ),
    # Efficient U-Net 256 -> 1024 (~400M): no self-attention, so it trains on crops.
    "sr1024": UNetConfig(
        channels=128, channel_mult=(1, 2, 4, 8), num_res_blocks=(2, 4, 8, 6),
        cross_attn_levels=(3,), text_dim=T5_XXL_DIM, lowres_cond=True,
    ),
    # Small enough to train the shapes model on CPU at 32-64 px (MiniLM text embeddings).
    "small-base": UNetConfig(
        channels=64, channel_mult=(1, 2, 3, 4), num_res_blocks=(1, 2, 2, 2),
        attn_levels=(2, 3), cross_attn_levels=(1, 2, 3), text_dim=MINILM_DIM,
    ),
    "small-sr": UNetConfig(
        channels=32, channel_mult=(1, 2, 4, 8), num_res_blocks=(1, 2, 3, 3),
        cross_attn_levels=(2, 3), text_dim=MINILM_DIM, lowres_cond=True,
    ),
    # For tests: a few thousand parameters, every feature switched on somewhere.
    "tiny-base": UNetConfig(
        channels=16, channel_mult=(1, 2), num_res_blocks=(1, 2),
        attn_levels=(1,), cross_attn_levels=(0, 1), head_dim=8, text_dim=32, norm_groups=8,
    ),
    "tiny-sr": UNetConfig(
        channels=16, channel_mult=(1, 2), num_res_blocks=(1, 2),
        cross_attn_levels=(1,), head_dim=8, text_dim=32, norm_groups=8, lowres_cond=True,
    ),
}


def get_preset(name: str, **overrides: Any) -> UNetConfig:
    """A fresh copy of a preset, with any fields replaced (e.g. ``text_dim=4096``)."""
    if not isinstance(name, str) or name not in PRESETS:
        raise PixcadeError(f"unknown U-Net preset {name!r} (choose from {', '.join(PRESETS)})")
    d = PRESETS[name].to_dict()
    unknown = set(overrides) - set(d)
    if unknown:
        raise PixcadeError(f"unknown U-Net config fields: {sorted(unknown)}")
    d.update(overrides)
    return UNetConfig.from_dict(d)
