"""The training configs in configs/ load and validate, and the ones that hand weights to a
later phase build U-Nets whose tensors that phase can take whole."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pixcade.nn.unet import EfficientUNet
from pixcade.stage import StageConfig
from pixcade.train.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _tensor_shapes(stage: StageConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only, nothing allocated
        net = EfficientUNet(stage.unet)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds_its_unets(path):
    # Loading validates every field; building catches what only the layers check.
    for entry in load_config(path).stages:
        if entry.distill is None:  # a distilled stage's U-Net is its teacher's
            assert _tensor_shapes(entry.stage_config())


def test_the_32px_emoji_base_initialises_every_tensor_of_the_64px_base():
    # Phase 0 trains the base at 32 px to start phase 1 from (train.init_from); the U-Net is
    # fully convolutional, so the same tensors serve both resolutions, if the configs agree.
    low = load_config(CONFIGS / "emoji-phase0-32.json").stage("base").stage_config()
    high = load_config(CONFIGS / "emoji-phase1.json").stage("base").stage_config()
    assert (low.resolution, high.resolution) == (32, 64)
    assert _tensor_shapes(low) == _tensor_shapes(high)
