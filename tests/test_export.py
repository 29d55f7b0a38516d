"""Checkpoints as stage exports (`pixcade train export`) and `pixcade assemble`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pixcade.cli import main as pixcade_main
from pixcade.errors import PixcadeError
from pixcade.pipeline.cascade import Cascade
from pixcade.stage import Stage
from pixcade.train import checkpoint as ckpt
from pixcade.train.export import export_checkpoint, find_checkpoint
from tiny_cascade import tiny_configs
from train_support import build_cache, make_shapes, state_equal, tiny_config


def fake_run(run: Path, config, steps: list[int], seed: int = 0) -> dict[int, dict[str, torch.Tensor]]:
    """A run directory as the trainer leaves it, with a distinct EMA at each step."""
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(
        {"stage": config.name, "config": {"text_encoder": "minilm", "max_length": 32, "stages": []}}))
    net = Stage(config).net
    emas = {}
    for k, step in enumerate(steps):
        torch.manual_seed(seed * 100 + k)
        ema = {name: v + torch.randn_like(v) if v.is_floating_point() else v.clone()
               for name, v in net.state_dict().items()}
        ckpt.save_checkpoint(run / "checkpoints", step, model=net.state_dict(), ema=ema,
                             optimizer=torch.optim.Adam(net.parameters()).state_dict(),
                             state={"stage": config.to_dict(), "ranks": []}, keep=5)
        emas[step] = ema
    return emas


def net_state(cascade: Cascade, name: str) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in cascade.stage(name).net.state_dict().items()}


def test_export_newest_or_named_checkpoint_loads_into_a_cascade(tmp_path):
    base_cfg, sr_cfg = tiny_configs()
    base = fake_run(tmp_path / "base", base_cfg, [10, 20])
    sr = fake_run(tmp_path / "sr", sr_cfg, [30], seed=1)

    newest = export_checkpoint(tmp_path / "base")
    assert newest == tmp_path / "base/exports/step-00000020"
    meta = json.loads((newest / "stage.json").read_text())
    assert meta == {"stage": base_cfg.to_dict(), "text_encoder": "minilm", "max_length": 32, "step": 20}
    assert state_equal(load_file(newest / "ema.safetensors"), base[20])

    for name in ("step-10", "10", "step-00000010"):
        older = export_checkpoint(tmp_path / "base", name, tmp_path / "older")
        assert state_equal(load_file(older / "ema.safetensors"), base[10])

    # The weights the cascade samples with are the checkpoint's EMA weights, not its model's.
    cascade = Cascade.from_stage_dirs([newest, export_checkpoint(tmp_path / "sr")])
    assert cascade.names == ["base", "sr"] and cascade.max_length == 32
    assert state_equal(net_state(cascade, "base"), base[20])
    assert state_equal(net_state(cascade, "sr"), sr[30])


def test_export_and_assemble_cli(tmp_path, capsys):
    base_cfg, sr_cfg = tiny_configs()
    base = fake_run(tmp_path / "base", base_cfg, [10, 20])
    sr = fake_run(tmp_path / "sr", sr_cfg, [30], seed=1)
    assert pixcade_main(["train", "export", "--run", str(tmp_path / "base"), "--checkpoint", "step-10",
                         "--out", str(tmp_path / "e/base")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "e/base")
    assert pixcade_main(["train", "export", "--run", str(tmp_path / "sr")]) == 0
    capsys.readouterr()

    model = tmp_path / "model"
    assert pixcade_main(["assemble", str(tmp_path / "e/base"), str(tmp_path / "sr/exports/step-00000030"),
                         "--out", str(model)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [(s["stage"], s["step"]) for s in printed["stages"]] == [("base", 10), ("sr", 30)]
    sizes = {p.stem: p.stat().st_size for p in model.glob("*.safetensors")}
    assert {s["stage"]: s["weights_bytes"] for s in printed["stages"]} == sizes
    assert printed["total_bytes"] == sum(sizes.values())
    assert json.loads((model / "sources.json").read_text())["stages"] == printed["stages"]
    cascade = Cascade.from_pretrained(model)
    assert state_equal(net_state(cascade, "base"), base[10])
    assert state_equal(net_state(cascade, "sr"), sr[30])

    # Sampling defaults chosen after training replace the config's; weights are untouched.
    tuned = tmp_path / "tuned"
    assert pixcade_main(["assemble", str(tmp_path / "e/base"), str(tmp_path / "sr/exports/step-00000030"),
                         "--out", str(tuned), "--set", "base.guidance_weight=5", "--set", "base.threshold=static",
                         "--set", "sr.steps=7"]) == 0
    capsys.readouterr()
    again = Cascade.from_pretrained(tuned)
    base_config, sr_config = again.stage("base").config, again.stage("sr").config
    base_s, sr_s = base_config.sampling, sr_config.sampling
    assert (base_s.guidance_weight, base_s.threshold, sr_s.steps) == (5.0, "static", 7)
    assert sr_s.guidance_weight == cascade.stage("sr").config.sampling.guidance_weight
    assert state_equal(net_state(again, "base"), base[10])
    for bad, words in [("base.lr=1", "unknown keys: ['lr']"), ("up.steps=3", "unknown stage 'up'"),
                       ("base.steps=x", "cannot read 'x' as int"), ("base.threshold=hard", "threshold"),
                       ("base.sampler=euler9", "unknown sampler"),
                       # A value `generate` would refuse is refused here, before anything is written.
                       ("base.guidance_weight=-3", "guidance weight must be >= 0"),
                       ("base.steps=2.5", "cannot read '2.5' as int"), ("sr.aug_level=nan", "finite"),
                       ("base.aug_level=0.2", "not a super-resolution stage"),
                       ("base.sampler_args.eta=2", "DDIM eta must be in [0, 1], got 2.0")]:
        assert pixcade_main(["assemble", str(tmp_path / "e/base"), str(tmp_path / "sr/exports/step-00000030"),
                             "--out", str(tmp_path / "bad"), "--set", bad]) == 2
        assert words in capsys.readouterr().err and not (tmp_path / "bad").exists()

    # SR first is not a cascade: refused before anything is written.
    assert pixcade_main(["assemble", str(tmp_path / "sr/exports/step-00000030"), str(tmp_path / "e/base"),
                         "--out", str(tmp_path / "bad")]) == 2
    assert "must be a base stage" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_export_errors_name_the_problem(tmp_path, capsys):
    base_cfg, _ = tiny_configs()
    fake_run(tmp_path / "run", base_cfg, [10, 20])
    with pytest.raises(PixcadeError, match=r"no checkpoint 'step-15' \(have: step-00000010, step-00000020\)"):
        find_checkpoint(tmp_path / "run", "step-15")
    with pytest.raises(PixcadeError, match="no checkpoint 'latest'"):
        find_checkpoint(tmp_path / "run", "latest")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/config.json").write_text((tmp_path / "run/config.json").read_text())
    with pytest.raises(PixcadeError, match="no checkpoint in"):
        export_checkpoint(tmp_path / "empty")
    with pytest.raises(PixcadeError, match="cannot read the run's config"):
        export_checkpoint(tmp_path / "nowhere")
    assert pixcade_main(["train", "export", "--run", str(tmp_path / "run"), "--checkpoint", "99"]) == 2
    assert "no checkpoint '99'" in capsys.readouterr().err


def test_exporting_the_last_checkpoint_equals_the_trainers_final(tmp_path):
    from pixcade.train.trainer import train

    data = make_shapes(tmp_path / "data", 8, resolution=32)
    build_cache(tmp_path / "cache", data)
    cfg = tiny_config(data, tmp_path / "cache", "base", batch_size=4, max_steps=2, log_every=1,
                      checkpoint_every=1, sample_every=1000, warmup_steps=1)
    train(cfg, "base", tmp_path / "run")
    export = export_checkpoint(tmp_path / "run")
    assert export.name == "step-00000002"
    final = tmp_path / "run/final"
    assert json.loads((export / "stage.json").read_text()) == json.loads((final / "stage.json").read_text())
    assert state_equal(load_file(export / "ema.safetensors"), load_file(final / "ema.safetensors"))


def test_unpack_cascade_script_round_trips_through_assemble(tmp_path, capsys):
    import importlib.util

    from train_support import REPO

    spec = importlib.util.spec_from_file_location("unpack_cascade", REPO / "scripts" / "unpack_cascade.py")
    unpack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(unpack)
    base = fake_run(tmp_path / "base", tiny_configs()[0], [10])
    sr = fake_run(tmp_path / "sr", tiny_configs()[1], [30], seed=1)
    for run in ("base", "sr"):
        assert pixcade_main(["train", "export", "--run", str(tmp_path / run)]) == 0
    model = tmp_path / "model"
    assert pixcade_main(["assemble", str(tmp_path / "base/exports/step-00000010"),
                         str(tmp_path / "sr/exports/step-00000030"), "--out", str(model)]) == 0

    assert unpack.main([str(model), "--out", str(tmp_path / "exports"), "--name", "base=base-p1"]) == 0
    meta = json.loads((tmp_path / "exports/base-p1/stage.json").read_text())
    assert meta["step"] == 10 and meta["stage"]["name"] == "base"
    assert json.loads((tmp_path / "exports/sr/stage.json").read_text())["step"] == 30
    again = tmp_path / "again"
    assert pixcade_main(["assemble", str(tmp_path / "exports/base-p1"), str(tmp_path / "exports/sr"),
                         "--out", str(again)]) == 0
    for name in ("cascade.json", "base.safetensors", "sr.safetensors"):
        assert (again / name).read_bytes() == (model / name).read_bytes(), name
    cascade = Cascade.from_pretrained(again)
    assert state_equal(net_state(cascade, "base"), base[10]) and state_equal(net_state(cascade, "sr"), sr[30])
    capsys.readouterr()

    (model / "sr.safetensors").unlink()
    assert unpack.main([str(model), "--out", str(tmp_path / "x")]) == 2
    assert "sr.safetensors: missing" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert unpack.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "not a saved cascade" in capsys.readouterr().err
