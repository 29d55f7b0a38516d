"""A distilled stage is a normal saved stage: saved, loaded, assembled beside undistilled
stages, and sampled with its own steps, one network pass per step."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pixcade.pipeline.cascade import Cascade, assemble
from pixcade.stage import Stage
from pixcade.train.config import DistillConfig
from pixcade.train.distill import student_config
from random_weights import perturb
from tiny_cascade import build_tiny_cascade, tiny_configs

PROMPTS = ["a red square", "two blue circles"]


def px(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def _random_stage(config, seed: int) -> Stage:
    torch.manual_seed(seed)
    stage = Stage(config)
    perturb(stage.net)  # the zero-initialised guidance projection too
    return stage


@pytest.fixture(scope="module")
def distilled() -> Cascade:
    """Base: guidance-distilled (w-conditioned, the teacher's sampler). SR: a v stage
    without guidance, halved to 2 steps."""
    base, sr = tiny_configs(steps=3)
    base = student_config(base, DistillConfig(teacher="-", phase="guided"))
    sr = dataclasses.replace(sr, parameterization="v", sampling=sr.sampling.replace(guidance_weight=1.0))
    sr = student_config(sr, DistillConfig(teacher="-", phase="halve", steps=2))
    return Cascade([_random_stage(base, 0), _random_stage(sr, 1)], text_encoder="minilm", max_length=32)


def test_saved_loaded_and_sampled_with_the_same_pixels(distilled: Cascade, tmp_path: Path):
    distilled.save_pretrained(tmp_path)
    stages = json.loads((tmp_path / "cascade.json").read_text())["stages"]
    assert stages[0]["unet"]["guidance_conditioned"] and stages[0]["distilled_steps"] is None
    sr_sampling = stages[1]["sampling"]
    assert (stages[1]["distilled_steps"], sr_sampling["steps"], sr_sampling["sampler"]) == (2, 2, "ddim")
    loaded = Cascade.from_pretrained(tmp_path)
    a = distilled.generate(PROMPTS, n=2, seed=5, progress=False)
    b = loaded.generate(PROMPTS, n=2, seed=5, progress=False)
    assert np.array_equal(px(a), px(b))
    # The weight is read: another guidance weight, other base images.
    c = loaded.generate(PROMPTS, n=2, seed=5, guidance_weight={"base": 7.0}, progress=False)
    assert np.abs(px(c) - px(a)).max() > 1


def test_sampled_with_its_own_steps_one_pass_per_step(distilled: Cascade):
    seen: dict[str, list[int]] = {"base": [], "sr": []}
    hooks = [distilled.stage(n).net.register_forward_hook(lambda m, a, out, n=n: seen[n].append(out.shape[0]))
             for n in seen]
    try:
        distilled.generate(PROMPTS, n=2, seed=0, progress=False)
    finally:
        for h in hooks:
            h.remove()
    # 4 images: the guided base (weight 3 by default) runs its 3 steps on 4 rows, not 8;
    # the halved SR stage runs its 2 distilled steps.
    assert seen == {"base": [4, 4, 4], "sr": [4, 4]}


def test_assemble_combines_distilled_and_undistilled_stages(distilled: Cascade, tmp_path: Path):
    plain = build_tiny_cascade(seed=0)
    dirs = []
    for stage in (distilled.stage("base"), plain.stage("sr")):
        final = tmp_path / f"run_{stage.config.name}" / "final"
        final.mkdir(parents=True)
        record = {"stage": stage.config.to_dict(), "text_encoder": "minilm", "max_length": 32, "step": 1}
        (final / "stage.json").write_text(json.dumps(record))
        save_file({k: v.contiguous() for k, v in stage.net.state_dict().items()}, final / "ema.safetensors")
        dirs.append(final.parent)
    out = tmp_path / "assembled"
    assembled = assemble(dirs, out)
    loaded = Cascade.from_pretrained(out)
    assert loaded.stage("base").config.guidance_conditioned and not loaded.stage("sr").config.guidance_conditioned
    mixed = Cascade([distilled.stage("base"), plain.stage("sr")], text_encoder="minilm", max_length=32)
    a = mixed.generate(PROMPTS, seed=2, progress=False)
    assert np.array_equal(px(a), px(assembled.generate(PROMPTS, seed=2, progress=False)))
    assert np.array_equal(px(a), px(loaded.generate(PROMPTS, seed=2, progress=False)))


def test_assemble_takes_a_stage_of_a_saved_cascade(distilled: Cascade, tmp_path: Path, capsys):
    """CASCADE_DIR:STAGE: a shipped model's stage beside a distilled one, without a run."""
    from pixcade.errors import PixcadeError
    from pixcade.pipeline.assemble_cli import main as assemble_main

    plain = build_tiny_cascade(seed=0)
    plain.save_pretrained(tmp_path / "plain")
    final = tmp_path / "run_base" / "final"
    final.mkdir(parents=True)
    base = distilled.stage("base")
    (final / "stage.json").write_text(json.dumps({"stage": base.config.to_dict(), "text_encoder": "minilm",
                                                  "max_length": 32, "step": 7}))
    save_file({k: v.contiguous() for k, v in base.net.state_dict().items()}, final / "ema.safetensors")
    assert assemble_main([str(final.parent), f"{tmp_path / 'plain'}:sr", "--out", str(tmp_path / "out")]) == 0
    sources = json.loads((tmp_path / "out" / "sources.json").read_text())["stages"]
    assert [(s["stage"], s["step"]) for s in sources] == [("base", 7), ("sr", None)]
    mixed = Cascade([base, plain.stage("sr")], text_encoder="minilm", max_length=32)
    loaded = Cascade.from_pretrained(tmp_path / "out")
    assert np.array_equal(px(mixed.generate(PROMPTS, seed=4, progress=False)),
                          px(loaded.generate(PROMPTS, seed=4, progress=False)))
    with pytest.raises(PixcadeError, match=r"no stage 'sr2' \(stages: base, sr\)"):
        assemble([final.parent, f"{tmp_path / 'plain'}:sr2"], tmp_path / "bad")
