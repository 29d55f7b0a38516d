"""Trainer parts in isolation: config, LR schedule, EMA, checkpoints, RNG state, data stream."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, IterableDataset

from pixcade.cli import main as pixcade_main
from pixcade.errors import PixcadeError
from pixcade.train import checkpoint as ckpt
from pixcade.train.config import CascadeTrainConfig, TrainConfig, load_config
from pixcade.train.data import BatchStream, DataPosition
from pixcade.train.ema import EMA
from pixcade.train.rng import capture_rng, restore_rng
from pixcade.train import setup
from pixcade.train.setup import build_optimizer, lr_at
from train_support import TINY_CONFIG, state_equal

# -- config -------------------------------------------------------------------------------


def test_tiny_config_resolves_presets_with_overrides():
    cfg = load_config(TINY_CONFIG)
    base = cfg.stage("base").stage_config()
    sr = cfg.stage("sr").stage_config()
    assert base.unet.text_dim == 384 and base.unet.channels == 16  # preset + override
    assert sr.is_super_resolution and sr.train_crop == 16 and sr.unet.lowres_cond
    assert cfg.stage("base").train.bf16 is False


def test_defaults_are_the_paper_recipe():
    t = TrainConfig()
    assert (t.lr, t.adam_betas, t.cond_drop_prob, t.batch_size, t.optimizer) == (1e-4, (0.9, 0.999), 0.1, 2048, "adam")
    assert t.ema_decay == 0.9999 and t.grad_clip == 1.0 and t.warmup_steps == 10_000


def test_toml_config_reads_like_json(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        'text_encoder = "minilm"\nmax_length = 16\nembedding_cache = "emb"\n'
        '[[stages]]\n[stages.stage]\nname = "base"\nresolution = 16\n'
        '[stages.stage.unet]\npreset = "tiny-base"\n'
        '[stages.train]\nbatch_size = 4\noptimizer = "adafactor"\nadam_betas = [0.8, 0.99]\n'
    )
    cfg = load_config(toml)
    assert cfg.max_length == 16 and cfg.stage("base").train.optimizer == "adafactor"
    assert cfg.stage("base").train.adam_betas == (0.8, 0.99)
    # A round trip through to_dict keeps everything.
    again = CascadeTrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("train, words", [
    ({"optimizer": "sgd"}, "unknown optimizer"),
    ({"lr": 0}, "lr"),
    ({"cond_drop_prob": 1.0}, "cond_drop_prob"),
    ({"batch_size": 0}, "batch_size"),
    ({"learning_rate": 1e-4}, "unknown keys"),
    ({"high_noise_share": 1.2}, "high_noise_share"),
    ({"high_noise_from": 1.0}, "high_noise_from"),
    ({"bf16": "yes"}, 'train.bf16 must be true, false or "auto"'),
    ({"bf16": 1}, "train.bf16"),
])
def test_bad_train_settings_name_the_problem(train, words):
    with pytest.raises(PixcadeError, match=words):
        TrainConfig.from_dict(train)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_auto_follows_the_device_and_explicit_settings_do_not(monkeypatch, native):
    monkeypatch.setattr(setup, "computes_bf16", lambda device: native)
    cpu = torch.device("cpu")
    assert TrainConfig().bf16 == "auto"  # the default: emulated bf16 is many times slower than fp32
    assert setup.autocast_bf16(TrainConfig(bf16="auto"), cpu) is native
    assert setup.autocast_bf16(TrainConfig(bf16=True), cpu) is True
    assert setup.autocast_bf16(TrainConfig(bf16=False), cpu) is False
    note = setup.precision_note(TrainConfig(bf16="auto"), cpu)
    assert note.startswith("pixcade train: bf16 autocast" if native else "pixcade train: fp32")
    assert ("does not compute" in note) is not native
    # Asking for bf16 where it is emulated trains as asked, with a warning.
    assert ("emulated" in setup.precision_note(TrainConfig(bf16=True), cpu)) is not native
    assert "emulated" not in setup.precision_note(TrainConfig(bf16=False), cpu)


def test_batch_must_split_over_ranks_and_accumulation():
    t = TrainConfig(batch_size=12, grad_accum=3)
    assert t.micro_batch(2) == 2
    with pytest.raises(PixcadeError, match="not divisible"):
        t.micro_batch(5)


def test_unknown_stage_lists_the_stages():
    with pytest.raises(PixcadeError, match="base, sr"):
        load_config(TINY_CONFIG).stage("sr1024")


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert pixcade_main(["train", "--config", str(tmp_path / "nope.json"), "--stage", "base"]) == 2
    assert "config file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert pixcade_main(["train", "--config", str(bad), "--stage", "base"]) == 2


# -- learning rate and EMA ---------------------------------------------------------------------


def test_lr_warms_up_linearly_then_stays():
    t = TrainConfig(lr=1e-3, warmup_steps=4)
    assert [lr_at(t, s) for s in (1, 2, 4, 5, 1000)] == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-3, 1e-3])
    assert lr_at(TrainConfig(lr=1e-3, warmup_steps=0), 1) == 1e-3


def test_cosine_lr_halves_midway_and_ends_at_zero():
    t = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, lr_schedule="cosine")
    lrs = [lr_at(t, s) for s in range(1, 111)]
    assert lrs[9] == pytest.approx(1e-3)                      # end of warmup: the peak
    assert lr_at(t, 60) == pytest.approx(0.5e-3)              # half way through the decay
    assert lr_at(t, 35) == pytest.approx(1e-3 * (1 + math.cos(math.pi / 4)) / 2)
    assert lr_at(t, 110) == pytest.approx(0.0, abs=1e-15)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))    # never rises after warmup
    assert lr_at(t, 500) == pytest.approx(0.0, abs=1e-15)     # past max_steps (a raised limit) stays at 0


def test_lr_schedule_errors_name_the_problem():
    with pytest.raises(PixcadeError, match="lr_schedule 'linear'"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(PixcadeError, match="warmup_steps 100 >= max_steps 100"):
        TrainConfig(lr_schedule="cosine", warmup_steps=100, max_steps=100)


def test_ema_matches_the_closed_form():
    # Parameter jumps from p0 to p1 and stays: shadow = p1 + (p0 - p1) * prod(decay_i).
    net = torch.nn.Linear(3, 2)
    p0 = net.weight.detach().clone()
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        net.weight.add_(1.0)
    p1 = net.weight.detach().clone()
    prod = 1.0
    for i in range(100):
        prod *= min(0.9, (1 + i) / (10 + i))
        ema.update(net)
    assert torch.allclose(ema.shadow["weight"], p1 + (p0 - p1) * prod, atol=1e-6)
    assert ema.current_decay() == 0.9  # warm-up over
    other = torch.nn.Linear(3, 2)
    ema.copy_to(other)
    assert torch.equal(other.weight, ema.shadow["weight"])


# -- checkpoints ---------------------------------------------------------------------------


def _trained(opt_name: str, steps: int = 3):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = build_optimizer(net.parameters(), TrainConfig(optimizer=opt_name, lr=1e-2), torch.device("cpu"))
    for _ in range(steps):
        net(torch.randn(5, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return net, opt


@pytest.mark.parametrize("opt_name", ["adam", "adafactor"])
def test_optimizer_state_round_trips_exactly(tmp_path, opt_name):
    net, opt = _trained(opt_name)
    ema = EMA(net, 0.99)
    path = ckpt.save_checkpoint(tmp_path, 3, model=net.state_dict(), ema=ema.state_dict(),
                                optimizer=opt.state_dict(), state={"note": 1}, keep=2)
    c = ckpt.load_checkpoint(path)
    net2, opt2 = _trained(opt_name, steps=0)
    net2.load_state_dict(c.model)
    opt2.load_state_dict(c.optimizer)
    assert c.step == 3 and c.state["note"] == 1 and state_equal(c.ema, ema.state_dict())
    # One more identical step on both: bit-identical parameters.
    x = torch.randn(5, 4)
    for n, o in ((net, opt), (net2, opt2)):
        n(x).square().mean().backward()
        o.step()
    assert state_equal(net.state_dict(), net2.state_dict())


def test_keeps_the_newest_k_and_ignores_half_written(tmp_path):
    net, opt = _trained("adam", 1)
    parts = dict(model=net.state_dict(), ema=net.state_dict(), optimizer=opt.state_dict(), state={})
    for step in (10, 20, 30):
        ckpt.save_checkpoint(tmp_path, step, keep=2, **parts)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000020", "step-00000030"]
    stale = tmp_path / ".tmp-step-00000040-123"  # what a crash mid-write leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000030"
    ckpt.save_checkpoint(tmp_path, 40, keep=2, **parts)
    assert not stale.exists()
    (ckpt.latest_checkpoint(tmp_path) / "ema.safetensors").write_bytes(b"garbage")
    with pytest.raises(PixcadeError, match="cannot read checkpoint"):
        ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))


def test_rng_state_round_trips():
    g = torch.Generator().manual_seed(5)
    state = json.loads(json.dumps(capture_rng({"noise": g})))  # survives JSON
    first = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=g))
    torch.rand(7), np.random.rand(2), random.random(), torch.rand(9, generator=g)
    restore_rng(state, {"noise": g})
    again = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=g))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2] and torch.equal(first[3], again[3])


# -- data stream ---------------------------------------------------------------------------


class _Numbers(Dataset):
    """Epoch-shuffled 0..n-1, like open_dataset's map-style datasets."""

    def __init__(self, n: int):
        self.n, self.order = n, list(range(n))

    def set_epoch(self, epoch: int) -> None:
        self.order = torch.randperm(self.n, generator=torch.Generator().manual_seed(epoch)).tolist()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return self.order[i]


class _Stream(IterableDataset):
    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(((i * 7 + self.epoch) % self.n for i in range(self.n)))


@pytest.mark.parametrize("make", [_Numbers, _Stream])
def test_stream_resumes_at_its_position(make):
    def stream(position=None):
        return BatchStream(make(10), batch_size=3, collate=list, position=position)

    straight = stream()
    seen = [next(straight) for _ in range(9)]  # crosses two epoch ends (4 batches each)
    assert straight.position == DataPosition(2, 1)
    # Each epoch is one pass over all samples (the last batch short, none dropped).
    assert sorted(sum(seen[:4], [])) == list(range(10))
    head = stream()
    for _ in range(5):
        next(head)
    resumed = stream(DataPosition.from_dict(head.position.to_dict()))
    assert [next(resumed) for _ in range(4)] == seen[5:]


def test_empty_dataset_is_an_error():
    with pytest.raises(PixcadeError, match="no samples"):
        next(BatchStream(_Numbers(0), batch_size=2, collate=list))
