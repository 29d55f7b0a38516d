"""The Efficient U-Net and its configurations."""

from pixcade.nn.configs import PRESETS, UNetConfig, get_preset
from pixcade.nn.unet import EfficientUNet, count_parameters

__all__ = ["PRESETS", "EfficientUNet", "UNetConfig", "count_parameters", "get_preset"]
