"""A model argument names a folder or a shipped model (pixcade/weights/NAME)."""

from __future__ import annotations

import pytest

from pixcade.cli import main as pixcade_main
from pixcade.errors import PixcadeError
from pixcade.pipeline.shipped import resolve_model, shipped_models, weights_dir


def test_names_resolve_to_shipped_folders_and_folders_win(tmp_path, monkeypatch):
    assert "shapes" in shipped_models()
    assert resolve_model(None) == weights_dir() / "shapes" == resolve_model("shapes")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes").mkdir()  # a user's own folder of that name is what they meant
    assert resolve_model("shapes").resolve() == tmp_path / "shapes"
    assert resolve_model(tmp_path) == tmp_path


def test_unknown_name_is_one_line_naming_the_shipped_models(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PixcadeError, match=r"model 'emojii' not found.*shipped: .*shapes"):
        resolve_model("emojii")
    assert pixcade_main(["generate", "--model", "no-such-model", "a red circle"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'no-such-model' not found" in err


def test_a_file_given_as_the_model_is_named_as_a_file(tmp_path, capsys):
    weights = tmp_path / "base.safetensors"  # a stage's weights, not the cascade folder holding them
    weights.write_bytes(b"not a folder")
    assert pixcade_main(["generate", "--model", str(weights), "a red circle"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{weights} is a file, not a model directory" in err
    assert pixcade_main(["generate", "--model", str(tmp_path / "missing"), "a red circle"]) == 2
    assert "missing' not found" in capsys.readouterr().err


def test_python_api_takes_a_shipped_name():
    from pixcade.pipeline.cascade import Cascade

    by_name = Cascade.from_pretrained("shapes")
    by_path = Cascade.from_pretrained(weights_dir() / "shapes")
    assert [s.config for s in by_name.stages] == [s.config for s in by_path.stages]


def test_the_fast_variant_is_the_teacher_with_a_distilled_base_and_its_own_sr_from_the_input():
    """pixcade/weights/shapes-fast (issue 24): the base stage distilled (one pass per step, the
    teacher's guidance weight in its weights), the SR stage the teacher's own weights stored in
    fp16, sampled from its noised upsampled input; it generates at 128 px by name."""
    import torch
    from safetensors.torch import load_file

    from pixcade.pipeline.cascade import Cascade
    from pixcade.pipeline.saving import load_cascade_config

    fast, teacher = (load_cascade_config(weights_dir() / name) for name in ("shapes-fast", "shapes"))
    base, sr = fast.stages
    assert base.distilled_steps == base.sampling.steps == base.network_evaluations()
    assert base.distilled_guidance is not None and base.sampling.guidance_weight == 1.0
    assert base.unet == teacher.stages[0].unet and sr.unet == teacher.stages[1].unet
    assert sr.sampling.start < 1.0 and sr.network_evaluations() == sr.sampling.steps
    ours, theirs = (load_file(weights_dir() / name / "sr.safetensors") for name in ("shapes-fast", "shapes"))
    assert ours.keys() == theirs.keys() and all(v.dtype == torch.float16 for v in ours.values())
    assert all(torch.equal(ours[k], theirs[k].half()) for k in ours)
    images = Cascade.from_pretrained("shapes-fast").generate("a red circle", progress=False)
    assert [im.size for im in images] == [(128, 128)]


def test_the_emoji_model_is_a_64_to_256_cascade_within_its_size_that_generates_by_name():
    """pixcade/weights/emoji (issue 28): the offline text encoder, a 64 px base sampled with static
    clipping (dynamic thresholding greys white-ground artwork: its card), an SR stage started from its
    noised upsampled input, EMA weights at most 60 MB; it generates 256 px images by name."""
    from pixcade.pipeline.cascade import Cascade
    from pixcade.pipeline.saving import load_cascade_config

    folder = weights_dir() / "emoji"
    config = load_cascade_config(folder)
    base, sr = config.stages
    assert config.text_encoder == "minilm" and (base.resolution, sr.lowres_resolution, sr.resolution) == (64, 64, 256)
    assert base.sampling.threshold == "static" and 0 < sr.sampling.start < 1 and sr.sampling.aug_level > 0
    assert sum(p.stat().st_size for p in folder.glob("*.safetensors")) <= 60 * 10**6
    assert (folder / "MODEL_CARD.md").is_file()
    images = Cascade.from_pretrained("emoji").generate("rocket, OpenMoji style", progress=False)
    assert [im.size for im in images] == [(256, 256)]


def test_the_shipped_emoji_judges_are_the_ones_the_emoji_card_cites():
    """pixcade/weights/emoji-judges (issue 28): the two fixed judges load; each file is the one its
    training report names (sha256), trained by the recorded command with the seed its name says;
    the emoji model card's judge table cites exactly these digests, so its numbers were read with
    the weights that ship."""
    import json

    from pixcade.eval.emoji_classifier import load_classifier, shipped_judges

    judges = shipped_judges()
    assert [p.stem for p in judges] == ["judge-w32-seed0", "judge-w32-seed1"]
    card = (weights_dir() / "emoji" / "MODEL_CARD.md").read_text()
    for seed, path in enumerate(judges):
        net, info = load_classifier(path)
        report = json.loads(path.with_suffix(".json").read_text())
        assert info["digest"] == report["sha256"]
        assert f"--seed {seed} " in report["command"] and info["ceiling"] == report["ceiling"]
        assert f"| `{path.stem}` | {seed} | {report['sha256'][:12]} |" in card
        assert len(net.styles) == 6


def test_no_shipped_judges_is_one_line_naming_the_flag(tmp_path, monkeypatch):
    from pixcade.eval import emoji_classifier

    monkeypatch.setattr(emoji_classifier, "weights_dir", lambda: tmp_path)
    with pytest.raises(PixcadeError, match=r"^no shipped emoji judges in .*; pass --classifier WEIGHTS$"):
        emoji_classifier.shipped_judges()
