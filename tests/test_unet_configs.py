"""U-Net configs: presets, JSON round trip, validation, parameter counts of the paper presets."""

import json

import pytest
import torch

from pixcade.errors import PixcadeError
from pixcade.nn import PRESETS, EfficientUNet, UNetConfig, count_parameters, get_preset

PAPER_SIZES = {"base64": 2.0e9, "sr256": 600e6, "sr1024": 400e6}
PAPER_RESOLUTION = {"base64": 64, "sr256": 256, "sr1024": 1024}


@pytest.mark.parametrize("name", sorted(PAPER_SIZES))
def test_paper_presets_count_within_ten_percent(name):
    n = count_parameters(PRESETS[name])
    assert abs(n - PAPER_SIZES[name]) / PAPER_SIZES[name] < 0.10, f"{name}: {n / 1e6:.0f}M"


def test_paper_presets_use_t5_xxl_width_and_small_ones_minilm():
    for name in PAPER_SIZES:
        assert PRESETS[name].text_dim == 4096
    for name in ("small-base", "small-sr"):
        assert PRESETS[name].text_dim == 384
        assert 5e6 <= count_parameters(PRESETS[name]) <= 15e6


def test_last_sr_stage_has_no_self_attention():
    assert PRESETS["sr1024"].attn_levels == ()
    assert PRESETS["sr1024"].cross_attn_levels != ()
    assert PRESETS["sr256"].lowres_cond and PRESETS["sr1024"].lowres_cond
    assert not PRESETS["base64"].lowres_cond


def test_count_parameters_matches_a_real_model():
    cfg = PRESETS["tiny-sr"]
    assert count_parameters(cfg) == sum(p.numel() for p in EfficientUNet(cfg).parameters())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_output_shape_equals_input_shape_on_meta_device(name):
    # The paper presets run here on "meta" tensors: shapes propagate, nothing is allocated.
    cfg = PRESETS[name]
    r = PAPER_RESOLUTION.get(name, 64)
    with torch.device("meta"):
        net = EfficientUNet(cfg)
        x = torch.empty(2, cfg.in_channels, r, r)
        kw = {"lowres": torch.empty_like(x), "aug_t": torch.empty(2)} if cfg.lowres_cond else {}
        out = net(x, torch.empty(2), torch.empty(2, 7, cfg.text_dim), torch.ones(2, 7, dtype=torch.bool), **kw)
    assert out.is_meta and out.shape == x.shape


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name):
    cfg = PRESETS[name]
    back = UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg


def test_get_preset_overrides_and_returns_a_copy():
    cfg = get_preset("tiny-base", text_dim=48, gradient_checkpointing=True)
    assert cfg.text_dim == 48 and cfg.gradient_checkpointing
    assert PRESETS["tiny-base"].text_dim == 32 and not PRESETS["tiny-base"].gradient_checkpointing
    with pytest.raises(PixcadeError, match="unknown U-Net preset"):
        get_preset("base128")
    with pytest.raises(PixcadeError, match="unknown U-Net config fields"):
        get_preset("tiny-base", widht=3)


def test_from_dict_rejects_unknown_keys():
    d = PRESETS["tiny-base"].to_dict() | {"colour": "red"}
    with pytest.raises(PixcadeError, match="unknown keys"):
        UNetConfig.from_dict(d)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"num_res_blocks": (1, 2, 3)}, "num_res_blocks"),
        ({"attn_levels": (2,)}, "out of range"),
        ({"norm_groups": 5}, "norm_groups"),
        ({"head_dim": 12}, "head_dim"),
        ({"dropout": 1.0}, "dropout"),
        ({"channel_mult": ()}, "channel_mult"),
    ],
)
def test_invalid_configs_are_named(bad, message):
    with pytest.raises(PixcadeError, match=message):
        get_preset("tiny-base", **bad)


def test_int_block_count_means_every_level():
    assert UNetConfig(channel_mult=(1, 2, 4), num_res_blocks=3).num_res_blocks == (3, 3, 3)
