"""The training configs in configs/ load and validate, and the ones that hand weights to a
later phase build U-Nets whose tensors that phase can take whole."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from pixcade.diffusion.schedules import get_schedule
from pixcade.nn.grow import grown_config
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


# Phase 0 (32 px) -> phase 1 (64 px) pairs: phase 1 starts from phase 0's weights.
PHASES = [("emoji-phase0-32.json", "emoji-phase1.json"), ("emoji-phase0-32-shifted.json", "emoji-phase1.json"),
          ("emoji-phase0-32.json", "emoji-phase1-cosine025.json")]


@pytest.mark.parametrize("low_name, high_name", PHASES)
def test_the_32px_emoji_base_initialises_every_tensor_of_the_64px_base(low_name, high_name):
    # Phase 0 trains the base at 32 px to start phase 1 from (train.init_from); the U-Net is
    # fully convolutional, so the same tensors serve both resolutions, if the configs agree.
    low = load_config(CONFIGS / low_name).stage("base").stage_config()
    high = load_config(CONFIGS / high_name).stage("base").stage_config()
    assert (low.resolution, high.resolution) == (32, 64)
    assert _tensor_shapes(low) == _tensor_shapes(high)


@pytest.mark.parametrize("low_name, high_name", PHASES[1:])
def test_a_shifted_pair_sees_the_same_layout_noise_at_both_resolutions(low_name, high_name):
    # (64 / 32)^2: a 64 px image at log-SNR lambda, 2x2 averaged, is a 32 px one at lambda + log 4
    # (tests/test_schedules.py measures it): either phase 0 takes 4x the SNR or phase 1 a quarter.
    low = get_schedule(load_config(CONFIGS / low_name).stage("base").stage_config().schedule)
    high = get_schedule(load_config(CONFIGS / high_name).stage("base").stage_config().schedule)
    t = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    torch.testing.assert_close(low.log_snr(t), high.log_snr(t) + 2 * math.log(64 / 32), atol=1e-3, rtol=0)


def test_the_grown_emoji_base_is_phase_0_grown_by_one_level_on_phase_0s_noise():
    # `pixcade train grow` turns phase 0's export into this U-Net (pixcade.nn.grow), whose old
    # levels see the 2x2-averaged image: at a quarter of the SNR, the noise phase 0 trained on.
    low = load_config(CONFIGS / "emoji-phase0-32.json").stage("base").stage_config()
    high = load_config(CONFIGS / "emoji-phase1-grown.json").stage("base").stage_config()
    assert (low.resolution, high.resolution) == (32, 64)
    assert high.unet == grown_config(low.unet)
    t = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    torch.testing.assert_close(get_schedule(low.schedule).log_snr(t),
                               get_schedule(high.schedule).log_snr(t) + 2 * math.log(2), atol=1e-3, rtol=0)


def differ_only_in(a, b, fields) -> bool:
    """Whether dataclasses ``a`` and ``b`` are equal once ``a`` takes ``b``'s ``fields``."""
    return dataclasses.replace(a, **{k: getattr(b, k) for k in fields}) == b


def test_the_decay_phase_continues_the_grown_run_with_only_its_lr_changed():
    # Phase 2 starts from an export of the grown run: same network, noise and sampling settings
    # (else its weights would meet another task); only the lr schedule, length and data order differ.
    grown = load_config(CONFIGS / "emoji-phase1-grown.json").stage("base")
    decay = load_config(CONFIGS / "emoji-phase2-grown-decay.json").stage("base")
    assert decay.stage_config() == grown.stage_config()
    assert (grown.train.lr_schedule, decay.train.lr_schedule) == ("constant", "cosine")
    assert decay.train.max_steps < grown.train.max_steps and decay.train.seed != grown.train.seed
    assert differ_only_in(decay.train, grown.train, ("lr_schedule", "max_steps", "warmup_steps", "seed"))


def test_the_second_cycle_continues_phase_2_with_a_lower_peak():
    # Phase 3 is a warm restart from phase 2's export: the same network, noise and sampling
    # settings; a lower peak lr (so the restart keeps more of the fit phase 2's decay bought),
    # a cosine as long as phase 2's (a cycle that trains and is checked within one session on
    # two CPU cores), and a data order neither earlier run saw.
    grown = load_config(CONFIGS / "emoji-phase1-grown.json").stage("base")
    decay = load_config(CONFIGS / "emoji-phase2-grown-decay.json").stage("base")
    cycle = load_config(CONFIGS / "emoji-phase3-grown-cycle.json").stage("base")
    assert cycle.stage_config() == decay.stage_config()
    assert cycle.train.lr_schedule == "cosine" and cycle.train.lr < decay.train.lr
    assert cycle.train.max_steps == decay.train.max_steps
    assert cycle.train.seed not in (grown.train.seed, decay.train.seed)
    assert differ_only_in(cycle.train, decay.train, ("lr", "max_steps", "seed"))
