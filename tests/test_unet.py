"""The Efficient U-Net on tiny configs: shapes, text masking, null embedding, SR inputs, gradients."""

import math

import pytest
import torch

from pixcade.errors import PixcadeError
from pixcade.nn import EfficientUNet, get_preset
from pixcade.nn.attention import attend
from pixcade.nn.layers import ResBlock
from random_weights import perturb


def make_net(name="tiny-base", seed=0, **overrides):
    """A net whose zero-initialised output layers are perturbed, so every path matters."""
    torch.manual_seed(seed)
    return perturb(EfficientUNet(get_preset(name, **overrides))).eval()


def make_inputs(cfg, b=2, res=16, length=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_channels, res, res, generator=g)
    t = torch.rand(b, generator=g)
    text = torch.randn(b, length, cfg.text_dim, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 3:] = False  # row 0 has two padding tokens
    kw = {}
    if cfg.lowres_cond:
        kw = {"lowres": torch.randn(b, cfg.in_channels, res, res, generator=g), "aug_t": torch.rand(b, generator=g)}
    return x, t, text, mask, kw


@pytest.mark.parametrize("name, res", [("tiny-base", 16), ("tiny-sr", 24), ("small-base", 32), ("small-sr", 32)])
def test_output_shape_equals_input_shape(name, res):
    net = make_net(name)
    x, t, text, mask, kw = make_inputs(net.config, b=1 if name.startswith("small") else 2, res=res)
    with torch.no_grad():
        out = net(x, t, text, mask, **kw)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["tiny-base", "tiny-sr"])
def test_changing_padded_tokens_changes_nothing(name):
    net = make_net(name)
    x, t, text, mask, kw = make_inputs(net.config)
    with torch.no_grad():
        ref = net(x, t, text, mask, **kw)
        garbage = text.clone()
        garbage[0, 3:] = float("nan")  # even NaN padding must not leak
        assert torch.equal(net(x, t, garbage, mask, **kw), ref)
        # Extra padding columns (a longer batch) change nothing either.
        longer = torch.cat([text, torch.randn(2, 4, text.shape[2]) * 100], dim=1)
        longer_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
        torch.testing.assert_close(net(x, t, longer, longer_mask, **kw), ref, rtol=1e-5, atol=1e-5)
        # ...while a real token does matter (so the checks above can fail).
        changed = text.clone()
        changed[0, 1] = torch.randn(text.shape[2])  # not a constant shift: LayerNorm removes those
        assert not torch.allclose(net(x, t, changed, mask, **kw)[0], ref[0], atol=1e-4)


def test_all_false_row_is_unconditional():
    net = make_net()
    x, t, text, mask, _ = make_inputs(net.config)
    empty = torch.zeros_like(mask)
    with torch.no_grad():
        uncond = net(x, t, text, empty)
        assert torch.equal(net(x, t, torch.randn_like(text), empty), uncond)
        torch.testing.assert_close(net(x, t, text[:, :0], empty[:, :0]), uncond)  # zero-length text
        assert not torch.allclose(net(x, t, text, mask), uncond, atol=1e-4)
        # The unconditional output is what the learned null token makes it.
        net.null_text.copy_(torch.randn_like(net.null_text))
        assert not torch.allclose(net(x, t, text, empty), uncond, atol=1e-4)


def test_rows_of_a_batch_are_independent():
    net = make_net("tiny-sr")
    x, t, text, mask, kw = make_inputs(net.config, b=3)
    with torch.no_grad():
        full = net(x, t, text, mask, **kw)
        for i in range(3):
            row = net(x[i : i + 1], t[i : i + 1], text[i : i + 1], mask[i : i + 1],
                      lowres=kw["lowres"][i : i + 1], aug_t=kw["aug_t"][i : i + 1])
            torch.testing.assert_close(row, full[i : i + 1], rtol=1e-5, atol=1e-5)


def test_time_lowres_and_aug_level_all_condition_the_output():
    net = make_net("tiny-sr")
    x, t, text, mask, kw = make_inputs(net.config)
    with torch.no_grad():
        ref = net(x, t, text, mask, **kw)
        assert not torch.allclose(net(x, t + 0.01, text, mask, **kw), ref, atol=1e-5)
        assert not torch.allclose(net(x, t, text, mask, lowres=-kw["lowres"], aug_t=kw["aug_t"]), ref, atol=1e-4)
        assert not torch.allclose(net(x, t, text, mask, lowres=kw["lowres"], aug_t=1 - kw["aug_t"]), ref, atol=1e-4)


@pytest.mark.parametrize("name", ["tiny-base", "tiny-sr"])
def test_gradients_reach_every_parameter(name):
    net = make_net(name, dropout=0.1).train()
    x, t, text, mask, kw = make_inputs(net.config, b=3)
    mask[2] = False  # an unconditional row, as classifier-free guidance training has
    net(x, t, text, mask, **kw).square().mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        net = make_net("tiny-sr", gradient_checkpointing=ckpt).train()
        x, t, text, mask, kw = make_inputs(net.config)
        net(x, t, text, mask, **kw).square().mean().backward()
        grads.append({n: p.grad for n, p in net.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6, msg=n)


def test_channels_last_matches_contiguous():
    net = make_net()
    x, t, text, mask, _ = make_inputs(net.config)
    with torch.no_grad():
        ref = net(x, t, text, mask)
        net = net.to(memory_format=torch.channels_last)
        out = net(x.to(memory_format=torch.channels_last), t, text, mask)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_runs_and_stays_close():
    net = make_net("tiny-sr")
    x, t, text, mask, kw = make_inputs(net.config)
    with torch.no_grad():
        ref = net(x, t, text, mask, **kw)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x, t, text, mask, **kw)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_resblock_scales_the_sum_by_inverse_sqrt2():
    block = ResBlock(8, 8, emb_dim=16, groups=4, dropout=0.0)
    torch.nn.init.zeros_(block.conv2.weight)
    torch.nn.init.zeros_(block.conv2.bias)
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(block(x, torch.randn(2, 16)), x / math.sqrt(2))


def test_attend_matches_masked_softmax():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 8, generator=g) for n in (3, 5, 5))
    mask = torch.tensor([[True, True, False, True, False], [True] * 5])
    out = attend(q, k, v, heads=2, mask=mask)
    for h in range(2):
        s = slice(4 * h, 4 * h + 4)
        logits = q[..., s] @ k[..., s].transpose(1, 2) / 2.0
        w = logits.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)
        torch.testing.assert_close(out[..., s], w @ v[..., s])


# -- bad input ------------------------------------------------------------------------------


def test_errors_are_named():
    net = make_net("tiny-base")
    cfg = net.config
    x, t, text, mask, _ = make_inputs(cfg)
    with pytest.raises(PixcadeError, match="not divisible by 2"):
        net(torch.randn(2, 3, 15, 16), t, text, mask)
    with pytest.raises(PixcadeError, match=r"\[B, 3, H, W\]"):
        net(torch.randn(2, 4, 16, 16), t, text, mask)
    with pytest.raises(PixcadeError, match="match 2 images"):
        net(x, t, text[:1], mask[:1])
    with pytest.raises(PixcadeError, match="text_dim"):
        net(x, t, torch.randn(2, 5, cfg.text_dim + 1), mask)
    with pytest.raises(PixcadeError, match="text mask"):
        net(x, t, text, mask[:, :4])
    with pytest.raises(PixcadeError, match="t must have shape"):
        net(x, t[:1], text, mask)
    with pytest.raises(PixcadeError, match="not a super-resolution"):
        net(x, t, text, mask, lowres=x)


def test_sr_errors_are_named():
    net = make_net("tiny-sr")
    x, t, text, mask, kw = make_inputs(net.config)
    with pytest.raises(PixcadeError, match="needs the upsampled low-res"):
        net(x, t, text, mask)
    with pytest.raises(PixcadeError, match="upsampled to the image shape"):
        net(x, t, text, mask, lowres=x[..., :8, :8], aug_t=kw["aug_t"])
    with pytest.raises(PixcadeError, match="aug_t must have shape"):
        net(x, t, text, mask, lowres=kw["lowres"], aug_t=torch.zeros(3))


def test_pixel_coords_name_the_same_place_at_every_resolution():
    from pixcade.nn.unet import pixel_coords

    c8 = pixel_coords(8, 8, torch.device("cpu"), torch.float32)
    assert c8.shape == (1, 2, 8, 8)
    # x grows to the right along width, y downwards along height; centres, symmetric about 0.
    assert torch.allclose(c8[0, 0, 3], torch.linspace(-7 / 8, 7 / 8, 8)) and (c8[0, 0, :, 0] == -7 / 8).all()
    assert torch.allclose(c8[0, 1, :, 5], torch.linspace(-7 / 8, 7 / 8, 8)) and (c8[0, 1, 0] == -7 / 8).all()
    # A 2x2 block at 16 px covers one pixel at 8 px: its mean position is that pixel's.
    assert torch.allclose(torch.nn.functional.avg_pool2d(pixel_coords(16, 16, torch.device("cpu"), torch.float32), 2), c8)


def grown_from_plain(option: str, param: str):
    """A tiny base net with `option` on, loaded from one without it: only `param` is new,
    and, being zero-initialised, it leaves the output as it was."""
    plain = make_net("tiny-base")
    grown = EfficientUNet(get_preset("tiny-base", **{option: True})).eval()
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert missing == [param] and not unexpected
    x, t, text, mask, _ = make_inputs(plain.config)
    with torch.no_grad():
        torch.testing.assert_close(grown(x, t, text, mask), plain(x, t, text, mask))
    return plain, grown


def assert_learns(option: str, param: str) -> None:
    """The zero-initialised weights get a gradient, so training can move them off zero."""
    net = make_net("tiny-base", **{option: True}).train()
    x, t, text, mask, _ = make_inputs(net.config)
    net(x, t, text, mask).square().mean().backward()
    assert net.get_parameter(param).grad.abs().sum() > 0


def test_coord_channels_start_as_a_no_op_and_then_condition_on_position():
    plain, coords = grown_from_plain("coord_channels", "coord_in.weight")
    x, t, text, mask, _ = make_inputs(plain.config)
    with torch.no_grad():
        coords.coord_in.weight.normal_(0, 0.5)
        assert not torch.allclose(coords(x, t, text, mask), plain(x, t, text, mask), atol=1e-4)
    assert_learns("coord_channels", "coord_in.weight")


def test_coord_channels_refuse_crop_training():
    from pixcade.stage import StageConfig

    with pytest.raises(PixcadeError, match="coord_channels with train_crop 16"):
        StageConfig(name="sr", resolution=32, lowres_resolution=8, train_crop=16,
                    unet=get_preset("tiny-sr", coord_channels=True))


def test_text_positions_start_as_a_no_op_and_make_the_net_see_word_order():
    plain, ordered = grown_from_plain("text_positions", "text_pos.weight")
    x, t, text, mask, _ = make_inputs(plain.config)
    mask[:] = True
    # Attention pools and cross-attends over a set: swapping two tokens can't change the
    # output of a net without positions, and must change it once positions are learnt.
    swapped = text[:, [1, 0, 2, 3, 4]]
    with torch.no_grad():
        torch.testing.assert_close(plain(x, t, swapped, mask), plain(x, t, text, mask), atol=1e-5, rtol=1e-5)
        ordered.text_pos.weight.normal_(0, 0.5)
        assert not torch.allclose(ordered(x, t, swapped, mask), ordered(x, t, text, mask), atol=1e-3)
    assert_learns("text_positions", "text_pos.weight")


def test_text_positions_are_distinct_per_index_and_independent_of_length():
    from pixcade.nn.unet import token_positions

    p8, p32 = token_positions(8, torch.device("cpu")), token_positions(32, torch.device("cpu"))
    torch.testing.assert_close(p32[:8], p8)  # a token's features don't depend on the padded length
    dist = torch.cdist(p32, p32) + torch.eye(32) * 1e9
    assert dist.min() > 0.1


def test_text_layers_start_as_a_no_op_learn_and_ignore_padding():
    plain = make_net("tiny-base")
    grown = EfficientUNet(get_preset("tiny-base", text_layers=2)).eval()
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all(k.startswith("text_blocks.") for k in missing) and not unexpected
    x, t, text, mask, _ = make_inputs(plain.config)
    mask[:] = True
    with torch.no_grad():
        torch.testing.assert_close(grown(x, t, text, mask), plain(x, t, text, mask))
        for p in grown.text_blocks.parameters():
            p.normal_(0, 0.2)
        out = grown(x, t, text, mask)
        assert not torch.allclose(out, plain(x, t, text, mask), atol=1e-3)
        # Padding is masked as keys: extra tokens marked False change nothing, whatever they hold.
        padded = torch.cat([text, torch.randn(text.shape[0], 3, text.shape[2]) * 50], dim=1)
        pad_mask = torch.cat([mask, mask.new_zeros(mask.shape[0], 3)], dim=1)
        torch.testing.assert_close(grown(x, t, padded, pad_mask), out, atol=1e-5, rtol=1e-5)
        # The unconditional row (no real token) is finite and ignores the text it is given.
        none = torch.zeros_like(mask)
        u1, u2 = grown(x, t, text, none), grown(x, t, torch.randn_like(text), none)
        assert torch.isfinite(u1).all()
        torch.testing.assert_close(u1, u2)
    net = make_net("tiny-base", text_layers=1).train()
    x, t, text, mask, _ = make_inputs(net.config)
    net(x, t, text, mask).square().mean().backward()
    for name in ("text_blocks.0.out.weight", "text_blocks.0.mlp.2.weight"):
        assert net.get_parameter(name).grad.abs().sum() > 0
    with pytest.raises(PixcadeError, match="text_layers must be >= 0, got -1"):
        get_preset("tiny-base", text_layers=-1)
