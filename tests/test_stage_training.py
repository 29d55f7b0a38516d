"""How a stage is conditioned in training: the SR stages' noise-conditioning augmentation
(level uniform in [0, 1] per sample, fed to the U-Net, the low-res input a forward diffusion
to that level), text dropout for classifier-free guidance (in `Stage.loss`) and the
trainer's gradient clipping."""

from __future__ import annotations

import json

import pytest
import torch
from scipy import stats

from pixcade.diffusion.schedules import alpha_sigma
from pixcade.errors import PixcadeError
from pixcade.nn.configs import get_preset
from pixcade.nn.unet import EfficientUNet
from pixcade.stage import Stage, StageConfig, upsample
from pixcade.train.trainer import train
from train_support import build_cache, make_shapes, tiny_config


class RecordingNet:
    """Stands in for the U-Net: records the conditioning of each call, predicts zeros."""

    def __init__(self):
        self.calls: list[dict[str, torch.Tensor]] = []

    def __call__(self, z, t, **cond):
        self.calls.append({k: v.clone() for k, v in cond.items()})
        return torch.zeros_like(z)


def _sr_stage(net) -> Stage:
    config = StageConfig(name="sr", resolution=8, lowres_resolution=4, unet=get_preset("tiny-sr"))
    return Stage(config, net=net)


def test_sr_loss_draws_a_uniform_augmentation_level_per_sample_and_noises_the_lowres_to_it():
    b = 4000
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, 8, 8, generator=g) * 2 - 1
    lowres = torch.rand(b, 3, 4, 4, generator=g) * 2 - 1
    emb, mask = torch.randn(b, 2, 32, generator=g), torch.ones(b, 2, dtype=torch.bool)
    net = RecordingNet()
    stage = _sr_stage(net)
    stage.loss(images, emb, mask, lowres, generator=g)
    (cond,) = net.calls
    aug = cond["aug_t"]
    assert aug.shape == (b,) and aug.min() >= 0 and aug.max() <= 1
    assert stats.kstest(aug.numpy(), "uniform").pvalue > 1e-3  # U[0, 1]
    # The U-Net's low-res input is alpha(aug) * upsampled + sigma(aug) * fresh noise, with
    # the very level it is told: the residual is standard normal, for every level.
    alpha, sigma = alpha_sigma(stage.schedule.log_snr(aug.double()).view(-1, 1, 1, 1))
    resid = (cond["lowres"].double() - alpha * upsample(lowres, 8).double()) / sigma
    assert abs(resid.mean().item()) < 0.01 and abs(resid.std().item() - 1) < 0.01
    low, high = aug < 0.3, aug > 0.7
    for part in (low, high):
        assert abs(resid[part].std().item() - 1) < 0.02
    # Clean-ish at low levels, mostly noise at high ones.
    err = (cond["lowres"] - upsample(lowres, 8)).square().flatten(1).mean(1)
    assert err[low].mean() < 0.2 * err[high].mean()
    assert torch.equal(cond["text_emb"], emb) and torch.equal(cond["text_mask"], mask)


def test_sr_loss_needs_the_lowres_image():
    with pytest.raises(PixcadeError, match="needs a low-res image"):
        _sr_stage(RecordingNet()).loss(torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 32), torch.ones(2, 1, dtype=torch.bool))


def test_sr_conditioning_takes_given_augmentation_noise_of_the_upsampled_shape():
    stage = _sr_stage(RecordingNet())
    lowres = torch.rand(2, 3, 4, 4) * 2 - 1
    emb, mask = torch.zeros(2, 1, 32), torch.ones(2, 1, dtype=torch.bool)
    aug_t = torch.tensor([0.2, 0.8])
    noise = torch.randn(2, 3, 8, 8)
    cond = stage.conditioning(emb, mask, lowres, aug_t, aug_noise=noise)
    alpha, sigma = alpha_sigma(stage.schedule.log_snr(aug_t).view(-1, 1, 1, 1))
    assert torch.allclose(cond["lowres"], alpha * upsample(lowres, 8) + sigma * noise, atol=1e-6)
    with pytest.raises(PixcadeError, match=r"augmentation noise has shape \[2, 3, 4, 4\], expected \[2, 3, 8, 8\]"):
        stage.conditioning(emb, mask, lowres, aug_t, aug_noise=torch.zeros(2, 3, 4, 4))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    data = make_shapes(root / "data", 16, resolution=16)
    build_cache(root / "cache", data)
    return data, root / "cache"


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_loss_replaces_text_by_the_null_input_with_probability_p(p):
    b = 4000
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(b, 3, 32, generator=g)
    mask = torch.rand(b, 3, generator=g) < 0.8
    mask[:, 0] = True  # every caption has a real token
    net = RecordingNet()
    config = StageConfig(name="base", resolution=8, unet=get_preset("tiny-base"))
    Stage(config, net=net).loss(torch.zeros(b, 3, 8, 8), emb, mask, cond_drop_prob=p, generator=g)
    (cond,) = net.calls
    dropped = ~cond["text_mask"].any(dim=1)
    # A dropped row is the null input (no text at all); a kept row is untouched.
    assert (cond["text_emb"][dropped] == 0).all()
    assert torch.equal(cond["text_emb"][~dropped], emb[~dropped])
    assert torch.equal(cond["text_mask"][~dropped], mask[~dropped])
    if p == 0.0:
        assert not dropped.any()
    else:
        assert stats.binomtest(int(dropped.sum()), b, p).pvalue > 1e-3


def test_trainer_drops_text_at_its_configured_rate(shapes, tmp_path, monkeypatch):
    data, cache = shapes
    masks: list[torch.Tensor] = []
    forward = EfficientUNet.forward

    def recording(self, x, t, text_emb, text_mask, *args, **kwargs):
        if self.training:
            masks.append(text_mask.clone())
        return forward(self, x, t, text_emb, text_mask, *args, **kwargs)

    monkeypatch.setattr(EfficientUNet, "forward", recording)
    cfg = tiny_config(data, cache, "base", batch_size=16, max_steps=4, cond_drop_prob=0.5, warmup_steps=1,
                      log_every=1, checkpoint_every=1000, sample_every=1000)
    train(cfg, "base", tmp_path / "run")
    dropped = torch.cat([~m.any(dim=1) for m in masks])
    assert len(dropped) == 64
    # Every caption is non-empty, so a row without real tokens was dropped.
    assert stats.binomtest(int(dropped.sum()), 64, 0.5).pvalue > 1e-3


def test_trainer_clips_the_gradient_norm_before_each_update(shapes, tmp_path, monkeypatch):
    from pixcade.train import setup

    data, cache = shapes
    norms: list[float] = []
    build = setup.build_optimizer

    def recording_optimizer(params, cfg, device):
        opt = build(params, cfg, device)
        step = opt.step

        def checked_step(*args, **kwargs):
            grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
            norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
            return step(*args, **kwargs)

        opt.step = checked_step
        return opt

    monkeypatch.setattr(setup, "build_optimizer", recording_optimizer)
    clip = 1e-3
    cfg = tiny_config(data, cache, "base", batch_size=16, max_steps=2, grad_clip=clip, warmup_steps=1,
                      log_every=1, checkpoint_every=1000, sample_every=1000)
    train(cfg, "base", tmp_path / "run")
    logged = [json.loads(line)["grad_norm"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(norms) == 2 and all(n > 10 * clip for n in logged)  # the raw norm is logged...
    assert all(n <= clip * (1 + 1e-4) for n in norms)  # ...the optimizer sees it clipped
