"""`pixcade distill`: the trainer's loop with a distillation objective, from a teacher export
to a student export, with checkpoints and exact resume, for a base and an SR stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pixcade import cli
from pixcade.diffusion.settings import SamplingSettings
from pixcade.errors import PixcadeError
from pixcade.nn.configs import get_preset
from pixcade.pipeline.cascade import Cascade
from pixcade.stage import Stage, StageConfig
from pixcade.train import checkpoint as ckpt
from pixcade.train.export import write_stage_export
from random_weights import perturb
from train_support import RERUN_ON_RANK_CRASH, build_cache, launch, make_shapes, state_equal, tiny_config_dict, wait_all

QUICK = dict(batch_size=4, max_steps=4, log_every=1, checkpoint_every=2, sample_every=1000, warmup_steps=1,
             num_workers=0)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    data = make_shapes(root / "data", 16, resolution=32)
    build_cache(root / "cache", data)
    return data, root / "cache"


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    """Random tiny stage exports: a guided v base (weight 3) and an unguided v SR stage."""
    root = tmp_path_factory.mktemp("teachers")
    configs = {
        "base": StageConfig(name="base", resolution=16, unet=get_preset("tiny-base", text_dim=384),
                            parameterization="v", sampling=SamplingSettings(guidance_weight=3.0, threshold="static")),
        "sr": StageConfig(name="sr", resolution=32, lowres_resolution=16, train_crop=16,
                          unet=get_preset("tiny-sr", text_dim=384), parameterization="v",
                          sampling=SamplingSettings(guidance_weight=1.0, threshold="static", aug_level=0.1)),
    }
    out = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        stage = Stage(config)
        perturb(stage.net)
        out[name] = write_stage_export(root / name, config.to_dict(), "minilm", 32, stage.net.state_dict(), 100)
    return out


def _config(tmp_path: Path, shapes, stage: str, distill: dict, **train) -> Path:
    d = tiny_config_dict(*shapes, stage, **{**QUICK, **train})
    d["stages"][0]["stage"] = {"name": stage}
    d["stages"][0]["distill"] = distill
    path = tmp_path / f"{stage}-{distill.get('phase', 'guided')}.json"
    path.write_text(json.dumps(d))
    return path


def _distill(*args: str | Path) -> int:
    return cli.main(["distill", *map(str, args)])


def _stage_json(run: Path) -> dict:
    return json.loads((run / "final" / "stage.json").read_text())["stage"]


def test_guided_phase_trains_exports_and_resumes_exactly(shapes, teachers, tmp_path):
    config = _config(tmp_path, shapes, "base", {"teacher": str(teachers["base"]), "phase": "guided"})
    assert _distill("--config", config, "--stage", "base", "--out", tmp_path / "straight") == 0
    stage = _stage_json(tmp_path / "straight")
    assert stage["unet"]["guidance_conditioned"] and stage["distilled_steps"] is None
    s = stage["sampling"]
    assert (s["sampler"], s["guidance_weight"], s["threshold"]) == ("dpm++", 3.0, "static")
    losses = [json.loads(x)["loss"] for x in (tmp_path / "straight/metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(x)]
    assert len(losses) == 4 and all(v > 0 for v in losses)
    # 2 steps, stop, resume for 2 more: the same weights, EMA and optimizer state.
    assert _distill("--config", config, "--stage", "base", "--out", tmp_path / "halves", "--max-steps", "2") == 0
    assert _distill("--config", config, "--stage", "base", "--out", tmp_path / "halves", "--resume") == 0
    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "straight/checkpoints"))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "halves/checkpoints"))
    assert a.step == b.step == 4 and state_equal(a.model, b.model) and state_equal(a.ema, b.ema)
    # The student export is a normal stage: it loads and samples beside the undistilled SR teacher.
    cascade = Cascade.from_stage_dirs([tmp_path / "straight", teachers["sr"]])
    assert len(cascade.generate("a red circle", steps={"base": 2, "sr": 2}, progress=False)) == 1


def test_halving_rounds_of_an_sr_stage_down_to_one_step(shapes, teachers, tmp_path, capsys):
    config = _config(tmp_path, shapes, "sr", {"teacher": str(teachers["sr"]), "phase": "halve", "steps": 2},
                     max_steps=2)
    assert _distill("--config", config, "--stage", "sr", "--out", tmp_path / "sr2") == 0
    stage = _stage_json(tmp_path / "sr2")
    s = stage["sampling"]
    assert (stage["distilled_steps"], s["steps"], s["sampler"], s["threshold"]) == (2, 2, "ddim", "none")
    # The next round's teacher is the last student; its steps default to half.
    args = ["--config", config, "--stage", "sr", "--phase", "halve"]
    assert _distill(*args, "--teacher", tmp_path / "sr2", "--steps", "0", "--out", tmp_path / "x") == 2
    assert "distill.steps must be a positive integer" in capsys.readouterr().err
    config_dict = json.loads(config.read_text())
    config_dict["stages"][0]["distill"].pop("steps")
    config.write_text(json.dumps(config_dict))
    assert _distill(*args, "--teacher", tmp_path / "sr2", "--out", tmp_path / "sr1") == 0
    assert _stage_json(tmp_path / "sr1")["distilled_steps"] == 1
    capsys.readouterr()
    assert _distill(*args, "--teacher", tmp_path / "sr1", "--out", tmp_path / "sr0") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already samples in 1 step: it cannot be halved" in err
    assert not (tmp_path / "sr0" / "checkpoints").exists()


def test_halving_a_guided_base_straight_gives_a_one_pass_stage_at_its_weight(shapes, teachers, tmp_path):
    config = _config(tmp_path, shapes, "base", {"teacher": str(teachers["base"]), "phase": "halve", "steps": 2,
                                                "factor": 4}, max_steps=2)
    assert _distill("--config", config, "--stage", "base", "--out", tmp_path / "b2") == 0
    stage = _stage_json(tmp_path / "b2")
    s = stage["sampling"]
    assert (stage["distilled_steps"], stage["distilled_guidance"], s["guidance_weight"], s["steps"]) == (2, 3.0, 1.0, 2)
    assert not stage["unet"]["guidance_conditioned"]
    cascade = Cascade.from_stage_dirs([tmp_path / "b2", teachers["sr"]])
    assert len(cascade.generate("a red circle", steps={"sr": 2}, progress=False)) == 1
    with pytest.raises(PixcadeError, match="guidance weight 3 distilled into its one pass"):
        cascade.generate("a red circle", guidance_weight={"base": 5.0}, progress=False)
    with pytest.raises(PixcadeError, match="no unconditional pass for a negative prompt"):
        cascade.generate("a red circle", negative_prompt="a blue square", progress=False)


def test_train_and_distill_refuse_each_others_entries(shapes, teachers, tmp_path, capsys):
    config = _config(tmp_path, shapes, "base", {"teacher": str(teachers["base"])})
    assert cli.main(["train", "--config", str(config), "--stage", "base", "--out", str(tmp_path / "r")]) == 2
    assert "has a distill section: run `pixcade distill`" in capsys.readouterr().err
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(tiny_config_dict(*shapes, "base")))
    assert _distill("--config", plain, "--stage", "base", "--out", tmp_path / "r") == 2
    assert "has no distill section" in capsys.readouterr().err
    # The SR teacher is unguided: nothing to distil for guidance; the error names the remedy.
    config = _config(tmp_path, shapes, "sr", {"teacher": str(teachers["sr"]), "phase": "guided"})
    assert _distill("--config", config, "--stage", "sr", "--out", tmp_path / "r") == 2
    assert "samples unguided (guidance_weight 1): there is no guidance to distil" in capsys.readouterr().err


@RERUN_ON_RANK_CRASH
def test_guided_phase_under_two_process_ddp(shapes, teachers, tmp_path):
    """`pixcade distill` started as torchrun starts it (gloo, 2 ranks, global batch 4 = 2 x 2):
    the student trains from its teacher's weights and exports a guidance-conditioned stage."""
    from safetensors.torch import load_file

    config = _config(tmp_path, shapes, "base", {"teacher": str(teachers["base"]), "phase": "guided"}, max_steps=3)
    run = tmp_path / "ddp"
    wait_all(launch(["-m", "pixcade.cli", "distill", "--config", str(config), "--stage", "base", "--out", str(run),
                     "--device", "cpu"], 2))
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(run / "checkpoints")).step == 3
    student, teacher = load_file(run / "final/ema.safetensors"), load_file(teachers["base"] / "ema.safetensors")
    assert set(student) - set(teacher) == {k for k in student if k.startswith("guidance_emb.")} != set()
    assert any(not torch.equal(student[k], teacher[k]) for k in teacher)  # it trained
    assert student["guidance_emb.mlp.2.weight"].abs().max() > 0  # the zero projection learnt
