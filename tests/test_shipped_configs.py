"""The training configs in configs/ load and validate, and the ones that hand weights to a
later phase build U-Nets whose tensors that phase can take whole."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pixcade.nn.unet import EfficientUNet
from pixcade.train.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert config.stages
    for entry in config.stages:
        if entry.distill is None:
            assert entry.stage_config().resolution >= 8


def _tensor_shapes(config_name: str, stage: str) -> dict[str, tuple[int, ...]]:
    unet = load_config(CONFIGS / config_name).stage(stage).stage_config().unet
    with torch.device("meta"):  # shapes only, nothing allocated
        net = EfficientUNet(unet)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def test_the_32px_emoji_base_initialises_every_tensor_of_the_64px_base():
    # Phase 0 trains the base at 32 px to start phase 1 from (train.init_from); the U-Net is
    # fully convolutional, so the same tensors serve both resolutions, if the configs agree.
    low = load_config(CONFIGS / "emoji-phase0-32.json").stage("base").stage_config()
    high = load_config(CONFIGS / "emoji-phase1.json").stage("base").stage_config()
    assert (low.resolution, high.resolution) == (32, 64)
    assert _tensor_shapes("emoji-phase0-32.json", "base") == _tensor_shapes("emoji-phase1.json", "base")
