"""Growing a U-Net by one full-resolution level (`pixcade.nn.grow`, `pixcade train grow`)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cli_support import verbs
from pixcade.errors import PixcadeError
from pixcade.nn.configs import UNetConfig
from pixcade.nn.grow import grow_state, grown_config
from pixcade.nn.unet import EfficientUNet
from pixcade.stage import StageConfig
from pixcade.train.export import write_stage_export
from pixcade.train.trainer import load_init_weights

train = verbs("train")


def tiny_unet(top_blocks: int = 1) -> UNetConfig:
    return UNetConfig(channels=16, channel_mult=(1, 2), num_res_blocks=(top_blocks, 1), attn_levels=(1,),
                      cross_attn_levels=(0, 1), head_dim=8, text_dim=12, norm_groups=4, text_positions=True)


def random_net(cfg: UNetConfig, seed: int = 0) -> EfficientUNet:
    torch.manual_seed(seed)
    net = EfficientUNet(cfg)
    with torch.no_grad():  # conv_out and other zero-initialised layers must count too
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net


@pytest.mark.parametrize("top_blocks", [1, 2])
def test_the_grown_net_is_the_old_one_on_the_averaged_input_upsampled(top_blocks):
    # The contract of pixcade.nn.grow: at 2R the grown net computes exactly the old net with its
    # input convolution followed by a 2x2 average and its output convolution preceded by a
    # nearest-neighbour x2 (group norm and swish commute with that upsampling).
    cfg = tiny_unet(top_blocks)
    old = random_net(cfg)
    new_cfg, state = grow_state(old)
    new = EfficientUNet(new_cfg)
    new.load_state_dict(state)  # strict: the grown state is complete

    torch.manual_seed(1)
    x, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    text, mask = torch.randn(2, 5, 12), torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    with torch.no_grad():
        got = new(x, t, text, mask)
        old.conv_in = nn.Sequential(old.conv_in, nn.AvgPool2d(2))
        old.conv_out = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), old.conv_out)
        want = old(x, t, text, mask)
    assert got.shape == (2, 3, 16, 16)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_every_old_tensor_moves_one_level_down_unchanged():
    net = random_net(tiny_unet())
    old = net.state_dict()
    new_cfg, state = grow_state(net)
    assert new_cfg.channel_mult == (1, 1, 2) and new_cfg.num_res_blocks == (1, 1, 1)
    assert (new_cfg.attn_levels, new_cfg.cross_attn_levels) == ((2,), (1, 2))
    assert torch.equal(state["down.1.res.0.conv1.weight"], old["down.0.res.0.conv1.weight"])
    assert torch.equal(state["down.2.down.conv.weight"], old["down.1.down.conv.weight"])
    assert torch.equal(state["up.1.res.0.conv2.weight"], old["up.1.res.0.conv2.weight"])  # up runs bottom-up
    assert torch.equal(state["conv_out.weight"], old["conv_out.weight"])
    moved = {k: k.replace("down.0.", "down.1.", 1) if k.startswith("down.0.") else
             k.replace("down.1.", "down.2.", 1) if k.startswith("down.1.") else k for k in old}
    assert all(torch.equal(state[moved[k]], v) for k, v in old.items())


def test_growing_is_reproducible_whatever_the_random_state():
    net = random_net(tiny_unet())
    torch.manual_seed(5)
    _, a = grow_state(net)
    _, b = grow_state(net)  # the global generator has moved on (or would have)
    assert all(torch.equal(a[k], b[k]) for k in a)


def base_export(tmp_path, **stage) -> tuple[StageConfig, dict[str, torch.Tensor]]:
    config = StageConfig(name="base", resolution=8, unet=tiny_unet(), schedule="cosine", parameterization="v", **stage)
    state = random_net(config.unet).state_dict()
    write_stage_export(tmp_path / "small", config.to_dict(), "minilm", 16, state, step=40)
    return config, state


def test_pixcade_train_grow_writes_an_export_that_initialises_every_tensor_of_the_grown_run(tmp_path, capsys):
    config, state = base_export(tmp_path)
    assert train(["grow", "--from", str(tmp_path / "small"), "--out", str(tmp_path / "big")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "big")
    meta = json.loads((tmp_path / "big" / "stage.json").read_text())
    grown = StageConfig.from_dict(meta["stage"])
    assert (grown.resolution, grown.unet, grown.schedule) == (16, grown_config(config.unet), "cosine")
    assert (meta["text_encoder"], meta["max_length"], meta["step"]) == ("minilm", 16, 40)
    assert torch.equal(load_file(tmp_path / "big" / "ema.safetensors")["down.1.res.0.conv1.weight"],
                       state["down.0.res.0.conv1.weight"])
    # train.init_from takes it whole: no tensor of the grown U-Net keeps a random initialisation.
    assert load_init_weights(EfficientUNet(grown.unet), tmp_path / "big", "base") == []


def test_an_export_whose_weights_do_not_fit_its_config_is_a_one_line_error(tmp_path):
    config, state = base_export(tmp_path)
    other = random_net(UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, text_dim=12, norm_groups=4))
    for name, weights in (("other", other.state_dict()),  # another config's weights
                          ("short", {k: v for k, v in state.items() if k != "conv_out.bias"})):  # never left random
        write_stage_export(tmp_path / name, config.to_dict(), "minilm", 16, weights, step=1)
    with pytest.raises(PixcadeError, match="does not fit the stage's U-Net"):
        train(["grow", "--from", str(tmp_path / "other"), "--out", str(tmp_path / "out")])
    with pytest.raises(PixcadeError, match="does not fit the stage's U-Net: 1 missing tensor.*conv_out.bias"):
        train(["grow", "--from", str(tmp_path / "short"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_growing_a_super_resolution_stage_or_a_missing_export_is_refused(tmp_path):
    sr_unet = UNetConfig(channels=16, channel_mult=(1, 2), num_res_blocks=1, text_dim=12, norm_groups=4,
                         lowres_cond=True)
    sr = StageConfig(name="sr", resolution=16, lowres_resolution=8, unet=sr_unet)
    write_stage_export(tmp_path / "sr", sr.to_dict(), "minilm", 16, EfficientUNet(sr_unet).state_dict(), step=1)
    with pytest.raises(PixcadeError, match="super-resolution stage; only a base stage grows"):
        train(["grow", "--from", str(tmp_path / "sr"), "--out", str(tmp_path / "out")])
    with pytest.raises(PixcadeError, match="no trained stage export"):
        train(["grow", "--from", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
