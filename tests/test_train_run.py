"""The trainer end to end on the tiny shapes config: learning, exact resume, signals,
non-finite losses, and a kill -9 in the middle of a checkpoint write."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pixcade.errors import PixcadeError
from pixcade.nn.unet import EfficientUNet
from pixcade.stage import Stage, StageConfig
from pixcade.train import checkpoint as ckpt
from pixcade.train import setup
from pixcade.train.trainer import NonFiniteLossError, train
from train_support import REPO, build_cache, make_shapes, state_equal, tiny_config, tiny_config_dict

# Small and quick: 8 images a step, no sample grids except at the end.
QUICK = dict(batch_size=8, log_every=1, checkpoint_every=1000, sample_every=1000, warmup_steps=2)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    data = make_shapes(root / "data", 40, resolution=32)
    build_cache(root / "cache", data)
    return data, root / "cache"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_on_tiny_shapes(shapes, tmp_path):
    data, cache = shapes
    cfg = tiny_config(data, cache, "base", batch_size=16, max_steps=40, log_every=5, sample_every=40,
                      warmup_steps=5)
    result = train(cfg, "base", tmp_path / "run")
    losses = [m["loss"] for m in metrics(tmp_path / "run")]
    assert len(losses) == 8 and result.step == 40 and result.stopped_by is None
    # From ~1 (an untrained eps-prediction) to well under half within 40 steps.
    assert losses[0] > 0.6 and max(losses[-2:]) < 0.5 * losses[0], losses
    # The export the cascade loads: stage.json + EMA weights that fit the stage's U-Net.
    final = json.loads((tmp_path / "run/final/stage.json").read_text())
    assert final["text_encoder"] == "minilm" and final["max_length"] == 32
    net = EfficientUNet(StageConfig.from_dict(final["stage"]).unet)
    net.load_state_dict(load_file(tmp_path / "run/final/ema.safetensors"))
    assert (tmp_path / "run/samples/step-00000040.png").is_file()
    m = metrics(tmp_path / "run")[-1]
    assert m["images_per_s"] > 0 and m["skipped_nonfinite"] == 0 and 0 < m["lr"] <= 2e-3


def _final_state(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    c = ckpt.load_checkpoint(ckpt.latest_checkpoint(run / "checkpoints"))
    opt = {f"{i}/{k}": v for i, s in c.optimizer["state"].items() for k, v in s.items()}
    return {"model": c.model, "ema": c.ema, "optimizer": opt, "final": load_file(run / "final/ema.safetensors")}


def _assert_same_run(a: Path, b: Path) -> None:
    sa, sb = _final_state(a), _final_state(b)
    for part in sa:
        assert state_equal(sa[part], sb[part]), part
    # The per-step losses match too (both runs log every step).
    la = {m["step"]: m["loss"] for m in metrics(a)}
    lb = {m["step"]: m["loss"] for m in metrics(b)}
    assert la == lb


SR = dict(QUICK, max_steps=8, num_workers=2)  # the SR stage: random crops + noise augmentation


@pytest.fixture(scope="module")
def straight_sr(shapes, tmp_path_factory):
    data, cache = shapes
    run = tmp_path_factory.mktemp("straight") / "run"
    train(tiny_config(data, cache, "sr", **SR), "sr", run)
    return run


def test_resume_is_bit_exact(shapes, straight_sr, tmp_path):
    data, cache = shapes
    cfg = tiny_config(data, cache, "sr", **SR)
    first = train(cfg, "sr", tmp_path / "run", max_steps=4)
    assert first.step == 4 and first.last_checkpoint.name == "step-00000004"
    second = train(cfg, "sr", tmp_path / "run", resume=True)
    assert second.step == 8
    _assert_same_run(straight_sr, tmp_path / "run")


def on_loss_calls(monkeypatch, act) -> None:
    """Runs ``act(n, loss) -> loss`` on the n-th call (1-based) of `Stage.loss`: with one
    micro-batch a step, call n is optimizer step n. A fault-injection point for tests that
    costs the trainer nothing."""
    original = Stage.loss
    calls = [0]

    def wrapped(self, *args, **kwargs):
        calls[0] += 1
        return act(calls[0], original(self, *args, **kwargs))

    monkeypatch.setattr(Stage, "loss", wrapped)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_writes_a_checkpoint_and_resume_continues_exactly(shapes, straight_sr, tmp_path, monkeypatch, sig):
    data, cache = shapes
    cfg = tiny_config(data, cache, "sr", **SR)

    def signal_in_step_3(n, loss):
        if n == 3:  # arrives during step 3, like a Ctrl-C would
            os.kill(os.getpid(), sig)
        return loss

    with monkeypatch.context() as patch:
        on_loss_calls(patch, signal_in_step_3)
        result = train(cfg, "sr", tmp_path / "run")
    assert result.stopped_by == sig.name and result.step == 3
    assert result.last_checkpoint.name == "step-00000003" and result.final_dir is None
    assert signal.getsignal(sig) is not None  # handlers restored
    train(cfg, "sr", tmp_path / "run", resume=True)
    _assert_same_run(straight_sr, tmp_path / "run")


def nan_at_steps(monkeypatch, steps) -> None:
    on_loss_calls(monkeypatch, lambda n, loss: loss * float("nan") if n in steps else loss)


def test_non_finite_loss_skips_the_update(shapes, tmp_path, monkeypatch):
    data, cache = shapes
    nan_at_steps(monkeypatch, {3, 4})
    cfg = tiny_config(data, cache, "base", **dict(QUICK, max_steps=6))
    result = train(cfg, "base", tmp_path / "run")
    assert result.step == 6 and result.skipped_nonfinite == 2
    c = ckpt.load_checkpoint(result.last_checkpoint)
    assert all(int(s["step"]) == 4 for s in c.optimizer["state"].values())  # 6 steps, 4 updates
    assert all(torch.isfinite(v).all() for v in c.model.values())
    logged = {m["step"]: m for m in metrics(tmp_path / "run")}
    assert logged[2]["skipped_nonfinite"] == 0 and logged[4]["skipped_nonfinite"] == 2
    assert logged[3]["loss"] is None and logged[3]["grad_norm"] is None and logged[5]["loss"] > 0


def test_many_non_finite_losses_stop_naming_the_last_good_checkpoint(shapes, tmp_path, monkeypatch):
    data, cache = shapes
    nan_at_steps(monkeypatch, set(range(3, 20)))
    cfg = tiny_config(data, cache, "base", **dict(QUICK, max_steps=20, checkpoint_every=2, max_nonfinite=3))
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive .*steps 3\.\.5.*update at step 2") as err:
        train(cfg, "base", tmp_path / "run")
    named = Path(str(err.value).split("last good checkpoint is ")[1].split(" ")[0])
    assert named == ckpt.latest_checkpoint(tmp_path / "run/checkpoints")
    assert all(torch.isfinite(v).all() for v in ckpt.load_checkpoint(named).model.values())


def test_training_reads_no_test_hook_from_the_environment(shapes, tmp_path, monkeypatch):
    # The variable an earlier trainer read inside every step to inject NaN losses.
    monkeypatch.setenv("PIXCADE_TEST_NAN_STEPS", "1,2")
    data, cache = shapes
    result = train(tiny_config(data, cache, "base", **dict(QUICK, max_steps=2)), "base", tmp_path / "run")
    assert result.skipped_nonfinite == 0 and all(m["loss"] is not None for m in metrics(tmp_path / "run"))


def test_existing_run_needs_resume(shapes, tmp_path):
    data, cache = shapes
    cfg = tiny_config(data, cache, "base", **dict(QUICK, max_steps=1))
    train(cfg, "base", tmp_path / "run")
    with pytest.raises(PixcadeError, match="--resume"):
        train(cfg, "base", tmp_path / "run")


def _digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_kill_9_during_checkpoint_write_keeps_the_previous_one(shapes, tmp_path):
    data, cache = shapes
    conf = tiny_config_dict(data, cache, "base", **dict(QUICK, max_steps=2, checkpoint_every=2))
    run = tmp_path / "run"
    train(tiny_config(data, cache, "base", **dict(QUICK, max_steps=2, checkpoint_every=2)), "base", run)
    good = ckpt.latest_checkpoint(run / "checkpoints")
    before = _digest(good)
    (tmp_path / "c.json").write_text(json.dumps(conf))
    env = dict(os.environ, PIXCADE_TEST_CHECKPOINT_SLEEP="120", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pixcade.cli", "train", "--config", str(tmp_path / "c.json"), "--stage", "base",
         "--out", str(run), "--resume", "--max-steps", "4"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while not list((run / "checkpoints").glob(".tmp-*/WRITING")):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the checkpoint write never started"
            time.sleep(0.05)
        assert (run / "checkpoints").glob(".tmp-*/model.safetensors")  # half written
    finally:
        proc.kill()  # SIGKILL: no handler runs
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert ckpt.list_checkpoints(run / "checkpoints") == [good] and _digest(good) == before
    assert ckpt.load_checkpoint(good).step == 2
    result = train(tiny_config(data, cache, "base", **dict(QUICK, max_steps=4, checkpoint_every=2)), "base", run,
                     resume=True)
    assert result.step == 4 and result.last_checkpoint.name == "step-00000004"
    assert not list((run / "checkpoints").glob(".tmp-*"))  # the debris is cleaned up
    # The killed run had logged steps 3 and 4 already; the resumed one logs them again, once.
    assert [row["step"] for row in metrics(run) if "step" in row] == [1, 2, 3, 4]


def test_bf16_adafactor_and_accumulation(shapes, tmp_path):
    data, cache = shapes
    cfg = tiny_config(data, cache, "sr", **dict(QUICK, max_steps=3, bf16=True, optimizer="adafactor",
                                                grad_accum=2, log_sample_keys=True))
    result = train(cfg, "sr", tmp_path / "run")
    c = ckpt.load_checkpoint(result.last_checkpoint)
    assert result.skipped_nonfinite == 0 and all(int(s["step"]) == 3 for s in c.optimizer["state"].values())
    assert all(torch.isfinite(v).all() for v in c.model.values())
    # Two micro-batches of 4 per optimizer step (global batch 8).
    batches = (tmp_path / "run/sample_keys/rank-0.jsonl").read_text().splitlines()
    assert [len(json.loads(b)["keys"]) for b in batches] == [4] * 6


@pytest.mark.parametrize("native", [True, False])
def test_bf16_auto_runs_the_steps_under_autocast_only_where_native(shapes, tmp_path, monkeypatch, capsys, native):
    data, cache = shapes
    monkeypatch.setattr(setup, "computes_bf16", lambda device: native)
    seen = []
    forward = EfficientUNet.forward

    def recording(self, x, t, *args, **kwargs):
        if self.training:
            seen.append(torch.is_autocast_enabled("cpu"))
        return forward(self, x, t, *args, **kwargs)

    monkeypatch.setattr(EfficientUNet, "forward", recording)
    cfg = tiny_config(data, cache, "base", **dict(QUICK, max_steps=2, bf16="auto"))
    train(cfg, "base", tmp_path / "run")
    assert len(seen) == 2 and set(seen) == {native}
    assert ("bf16 autocast" if native else "fp32 (train.bf16") in capsys.readouterr().err


def test_high_noise_share_reaches_the_training_noise_levels(shapes, tmp_path, monkeypatch):
    data, cache = shapes
    seen = []
    forward = EfficientUNet.forward

    def recording(self, x, t, *args, **kwargs):
        if self.training:
            seen.append(t.detach().clone())
        return forward(self, x, t, *args, **kwargs)

    monkeypatch.setattr(EfficientUNet, "forward", recording)
    cfg = tiny_config(data, cache, "base", **dict(QUICK, max_steps=3, high_noise_share=1.0, high_noise_from=0.9))
    train(cfg, "base", tmp_path / "run")
    t = torch.cat(seen)
    assert len(seen) == 3 and t.numel() == 24
    assert t.min() >= 0.9 and t.max() <= 1.0


def test_init_from_an_export_grows_the_model_and_refuses_a_mismatch(shapes, tmp_path, capsys):
    from pixcade.train.config import CascadeTrainConfig

    data, cache = shapes
    train(tiny_config(data, cache, "base", **dict(QUICK, max_steps=2)), "base", tmp_path / "a")
    source = load_file(tmp_path / "a/final/ema.safetensors")
    # The same stage grown by coordinate channels, from those weights, at an lr too small to move them.
    conf = tiny_config_dict(data, cache, "base", **dict(QUICK, max_steps=1, lr=1e-12,
                                                        init_from=str(tmp_path / "a/final")))
    conf["stages"][0]["stage"]["unet"]["coord_channels"] = True
    train(CascadeTrainConfig.from_dict(conf), "base", tmp_path / "b")
    grown = load_file(tmp_path / "b/final/ema.safetensors")
    assert set(grown) - set(source) == {"coord_in.weight"}
    for name, value in source.items():
        torch.testing.assert_close(grown[name], value, rtol=0, atol=1e-6, msg=name)
    assert grown["coord_in.weight"].abs().max() < 1e-6  # zero-initialised, and an lr of 1e-12
    assert "new, at their initialisation: coord_in.weight" in capsys.readouterr().err
    # Resumed without the option, the run still records where its weights came from.
    del conf["stages"][0]["train"]["init_from"]
    conf["stages"][0]["train"].update(max_steps=2, checkpoint_every=1)
    train(CascadeTrainConfig.from_dict(conf), "base", tmp_path / "b", resume=True)
    recorded = json.loads((tmp_path / "b/config.json").read_text())["config"]["stages"][0]["train"]
    assert recorded["init_from"] == str(tmp_path / "a/final") and recorded["max_steps"] == 2
    # Weights that do not fit: the SR stage's into the base stage; and a missing file.
    sr_export = tmp_path / "sr.safetensors"
    torch.manual_seed(0)
    sr_net = EfficientUNet(tiny_config(data, cache, "sr").stage("sr").stage_config().unet)
    from safetensors.torch import save_file
    save_file(sr_net.state_dict(), sr_export)
    wrong_shape = tmp_path / "wrong.safetensors"
    save_file({**source, "conv_out.weight": torch.zeros(3, 1, 3, 3)}, wrong_shape)
    for init, words in ((sr_export, r"train.init_from: .* unexpected tensor\(s\) \(e.g. 'aug_emb"),
                        (wrong_shape, r"train.init_from: .* 'conv_out.weight': file \[3, 1, 3, 3\] vs model \[3, 16, 3, 3\]"),
                        (tmp_path / "nothing", "no weights at")):
        bad = tiny_config(data, cache, "base", **dict(QUICK, max_steps=1, init_from=str(init)))
        with pytest.raises(PixcadeError, match=words):
            train(bad, "base", tmp_path / f"c-{init.name}")


def _break_ranks(d):
    d["ranks"] = "x"


def _break_rng(d):
    d["ranks"][0]["rng"]["torch"] = "AAAA"


@pytest.mark.parametrize("damage", [
    lambda state: state.write_text("{\"step\": 2,"),                       # cut short
    lambda state: state.write_bytes(b"\xff\xfe not text"),               # not UTF-8
    lambda state: state.write_text("[1, 2]"),                            # not an object
    lambda state: state.write_text(json.dumps(_edit(state, _break_ranks))),
    lambda state: state.write_text(json.dumps(_edit(state, _break_rng))),
    lambda state: (state.parent / "ema.safetensors").write_bytes(b"\0" * 10),
], ids=["truncated", "not-utf8", "not-object", "ranks-type", "rng", "ema-file"])
def test_a_damaged_latest_checkpoint_names_the_intact_ones_and_resume_from_uses_one(
        shapes, tmp_path, capsys, damage):
    from pixcade.cli import main as pixcade_main

    data, cache = shapes
    run = tmp_path / "run"
    train(tiny_config(data, cache, "base", **dict(QUICK, max_steps=2, checkpoint_every=1)), "base", run)
    older, latest = ckpt.list_checkpoints(run / "checkpoints")
    damage(latest / "state.json")
    (tmp_path / "c.json").write_text(json.dumps(tiny_config_dict(data, cache, "base", **dict(QUICK, max_steps=3))))
    argv = ["train", "--config", str(tmp_path / "c.json"), "--stage", "base", "--out", str(run), "--device", "cpu"]
    capsys.readouterr()
    assert pixcade_main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(latest) in err and f"--resume-from {older}" in err, err
    assert pixcade_main([*argv, "--resume-from", str(older)]) == 0
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(run / "checkpoints")).step == 3
    # The damaged newer checkpoint no longer stands among the run's checkpoints (where it
    # would take the place of the rewritten step); it is set aside, never deleted.
    for path in ckpt.list_checkpoints(run / "checkpoints"):
        ckpt.load_checkpoint(path)
    assert [p.name.startswith(latest.name) for p in (run / "checkpoints" / "set-aside").iterdir()] == [True]


def _edit(state: Path, change) -> dict:
    d = json.loads(state.read_text())
    change(d)
    return d
