"""`pixcade eval emoji sweep`: each cell is what `generate` draws with its settings, judged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from emoji_fixtures import HELD_OUT, make_packages
from pixcade.cli import main as pixcade_main
from pixcade.data.emoji.build import build_emoji_dataset
from pixcade.errors import PixcadeError
from pixcade.eval.emoji_classifier import (ClassifierConfig, load_classifier, predict, read_manifest, save_classifier,
                                          train_classifier)
from pixcade.eval.emoji_sweep import split_prompts, spread
from pixcade.eval.stage_grid import GRID_COMMAND_KEY, PAD, TEXT_WIDTH
from pixcade.eval.sweep import Axis, cell_label, cell_title, cells, parse_axis
from pixcade.pipeline.cascade import Cascade
from pixcade.pipeline.images import open_image
from tiny_cascade import save_tiny_cascade


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("emoji-sweep")
    data = root / "data"
    build_emoji_dataset(data, make_packages(root / "npm"), fetch=False, held_out=HELD_OUT, progress=False)
    torch.manual_seed(0)
    train = read_manifest(data / "base-64/train.jsonl")
    net, log = train_classifier(train, steps=2, batch_size=4, config=ClassifierConfig(width=8), progress=False)
    judge = root / "judge.safetensors"
    save_classifier(judge, net, log)
    return data, judge, save_tiny_cascade(root / "model")


def sweep(setup, out, *extra):
    data, judge, model = setup
    return pixcade_main(["eval", "emoji", "sweep", "--model", str(model), "--data", str(data), "--classifier",
                         str(judge), "--split", "all", "--out", str(out), *extra])


def pixels(path):
    return np.asarray(open_image(path))


def test_each_cell_is_what_generate_draws_with_its_settings_and_a_rerun_resumes(setup, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["--stages", "base", "--vary", "base.guidance_weight=1,4", "--vary", "base.threshold=static,dynamic"]
    assert sweep(setup, out, *args) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    labels = ["base.guidance_weight-1_base.threshold-static", "base.guidance_weight-1_base.threshold-dynamic",
              "base.guidance_weight-4_base.threshold-static", "base.guidance_weight-4_base.threshold-dynamic"]
    assert [r["cell"] for r in summary] == labels
    assert all(r["generated"]["n"] == 2 and r["ceiling"]["n"] == 2 for r in summary)
    report = json.loads((out / "sweep.json").read_text())
    assert report["axes"][0] == {"name": "base.guidance_weight", "values": ["1", "4"]}
    assert "| 4 | dynamic | judge |" in (out / "sweep.md").read_text()
    for label, row in zip(labels, summary):  # the list of images judged right agrees with the means
        per = report["judges"][str(setup[1])]["models"][label]["per_image"]
        right = [r["prompt"] for r in per if r["style_right"] and r["family_right"]]
        assert len(right) == round(row["generated"]["joint"] * row["generated"]["n"])
        title = f"guidance_weight {row['values'][0]}, threshold {row['values'][1]}"
        assert f"- {title} ({len(right)}): {'; '.join(right) or 'none'}" in (out / "sweep.md").read_text()
    picture = Image.open(out / "grid.png")  # the cells side by side, one row per prompt
    assert picture.text[GRID_COMMAND_KEY].startswith("pixcade eval emoji sweep")
    assert picture.size[0] == PAD + TEXT_WIDTH + PAD + 4 * (160 + PAD)

    cascade = Cascade.from_pretrained(setup[2])
    prompts = split_prompts(read_manifest(setup[0] / "base-64/heldout.jsonl"), "all")
    expected = cascade.generate(prompts, seed=0, stages=["base"], guidance_weight=4.0, threshold="static",
                                progress=False)
    listed = [json.loads(line) for line in (out / labels[2] / "prompts.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in listed] == prompts
    for row, image in zip(listed, expected):
        assert np.array_equal(pixels(out / labels[2] / row["images"][0]), np.asarray(image))
    assert not np.array_equal(pixels(out / labels[0] / listed[0]["images"][0]),
                              pixels(out / labels[2] / listed[0]["images"][0]))  # the weight matters

    # Killed half-way: the missing image is drawn again, the same; the others are kept.
    lost = out / labels[2] / listed[1]["images"][0]
    before = pixels(lost)
    lost.unlink()
    assert sweep(setup, out, *args) == 0
    assert np.array_equal(pixels(lost), before)
    capsys.readouterr()
    assert sweep(setup, out, *args, "--set", "base.steps=1") == 2  # other settings never mix into a cell
    assert "holds images of a different run" in capsys.readouterr().err


def test_the_augmentation_ablation_changes_only_the_sr_images(setup, tmp_path, capsys):
    out = tmp_path / "ablation"
    assert sweep(setup, out, "--vary", "sr.aug_level=0,0.5", "--set", "base.steps=1") == 0
    a, b = out / "sr.aug_level-0", out / "sr.aug_level-0.5"
    rows = [json.loads(line) for line in (a / "prompts.jsonl").read_text().splitlines()]
    report = json.loads((out / "sweep.json").read_text())
    assert report["fixed"] == [["base", "steps", "1"]]
    for row in rows:
        final = row["images"][0]
        base = f"stages/base/{final}"  # `generate --save-stages` layout
        assert pixels(a / base).shape[0] == 16
        assert np.array_equal(pixels(a / base), pixels(b / base))  # same seed, same base image
        assert pixels(a / final).shape[0] == 32
        assert not np.array_equal(pixels(a / final), pixels(b / final))


@pytest.mark.parametrize("vary, message", [
    ("base.nonsense=1,2", "nonsense"),
    ("base.guidance_weight=1,1", "a value repeats"),
    ("base.guidance_weight=1,-2", "cell base.guidance_weight--2"),
    ("nostage.steps=2", "unknown stage 'nostage'"),
    ("base.steps=", "expected [STAGE.]KEY=VALUE"),
])
def test_a_bad_axis_is_one_line_before_any_image(setup, tmp_path, capsys, vary, message):
    out = tmp_path / "bad"
    assert sweep(setup, out, "--vary", vary) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err
    assert not out.exists()


def test_the_images_of_all_cells_are_bounded_before_any_is_drawn(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PIXCADE_MAX_IMAGES", "7")
    out = tmp_path / "big"
    assert sweep(setup, out, "--stages", "base", "--n", "2", "--vary", "base.steps=1,2") == 2  # 2 x 2 x 2 = 8
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "2 cell(s) x 2 prompt(s) x 2 image(s)" in err, err
    assert not out.exists()


def test_a_bad_split_or_limit_is_one_line(setup, tmp_path, capsys):
    data, judge, model = setup
    base = ["eval", "emoji", "sweep", "--model", str(model), "--data", str(data), "--classifier", str(judge),
            "--vary", "steps=1", "--out", str(tmp_path / "o")]
    assert pixcade_main([*base, "--split", "training"]) == 2
    assert "unknown split 'training'" in capsys.readouterr().err
    assert pixcade_main([*base, "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err


def test_the_train_split_judges_training_prompts_against_their_own_images(setup, tmp_path, capsys):
    data, judge, _ = setup
    out = tmp_path / "fit"
    assert sweep(setup, out, "--stages", "base", "--split", "train", "--limit", "3") == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    train = read_manifest(data / "base-64/train.jsonl")
    index = spread(list(range(len(train.captions))), 3)
    report = json.loads((out / "sweep.json").read_text())
    assert report["split"] == "train" and report["prompts"] == 3
    drawn = {json.loads(line)["prompt"] for line in (out / "defaults/prompts.jsonl").read_text().splitlines()}
    assert drawn == {train.captions[i] for i in index}
    # The "ceiling" is the judge's reading of those very training images.
    net, _ = load_classifier(judge)
    real = predict(net, train.pixels[index])
    right = [s == train.styles[i] for s, i in zip(real["styles"], index)]
    assert summary[0]["ceiling"]["n"] == 3 and summary[0]["ceiling"]["style"] == pytest.approx(sum(right) / 3)
    assert (out / "sweep.md").read_text().count("Training prompts (fit, not generalisation") == 1


def test_cells_are_the_product_of_the_axes_first_axis_slowest():
    grid = cells([Axis("base", "guidance_weight", ("1", "5")), Axis(None, "steps", ("2", "3", "4"))])
    assert len(grid) == 6 and grid[1] == (("base", "guidance_weight", "1"), (None, "steps", "3"))
    assert cell_label(grid[1]) == "base.guidance_weight-1_steps-3"
    assert cell_label([("base", "threshold", "dynamic:99.5")]) == "base.threshold-dynamic-99.5"
    assert cell_title(grid[1]) == "guidance_weight 1, steps 3" and cell_title(()) == "defaults"
    with pytest.raises(PixcadeError, match="swept twice"):
        cells([Axis("base", "steps", ("2",)), Axis("base", "steps", ("3",))])
    assert parse_axis("sr.aug_level=0, 0.1", ["base", "sr"]) == Axis("sr", "aug_level", ("0", "0.1"))
    with pytest.raises(PixcadeError, match="share the folder base.sampler_args.x-a-b"):
        cells([Axis("base", "sampler_args.x", ("a:b", "a/b"))])


def test_no_axis_is_one_cell_the_model_as_it_samples(setup, tmp_path, capsys):
    out = tmp_path / "defaults"
    assert sweep(setup, out, "--stages", "base", "--n", "2") == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert [r["cell"] for r in summary] == ["defaults"] and summary[0]["generated"]["n"] == 4
    report = json.loads((out / "sweep.json").read_text())
    assert report["axes"] == [] and report["prompts"] == 2 and len(report["model_digest"]) == 64
    assert sweep(setup, tmp_path / "one", "--split", "test_cs") == 2  # one real image: no FD, no KID
    assert "split 'test_cs' gives 1 prompt(s); judging needs at least 2" in capsys.readouterr().err


def test_a_limit_spreads_over_the_list_not_its_first_style():
    assert spread(list(range(10)), 3) == [0, 3, 6]
    assert spread(list(range(4)), 4) == [0, 1, 2, 3] and spread(list(range(4)), None) == [0, 1, 2, 3]
    assert spread(list(range(2)), 5) == [0, 1]
    with pytest.raises(PixcadeError, match="--limit must be at least 1"):
        spread([], 0)
