"""The emoji judge at tiny sizes on synthetic data, and `pixcade eval emoji` end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from emoji_fixtures import HELD_OUT, make_packages
from pixcade.cli import main as pixcade_main
from pixcade.data.emoji.build import build_emoji_dataset
from pixcade.diffusion.settings import SamplingSettings
from pixcade.errors import PixcadeError
from pixcade.eval import emoji
from pixcade.eval.emoji_classifier import (
    ClassifierConfig, LabelledImages, augment, load_classifier, predict, read_manifest, save_classifier,
    shipped_judges, to_unit, train_classifier,
)
from pixcade.eval.fid import fid_from_features, kernel_inception_distance
from pixcade.nn.configs import get_preset
from pixcade.pipeline.cascade import Cascade
from pixcade.stage import Stage, StageConfig
from random_weights import perturb

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220)}  # style = colour
QUADRANTS = {"tl": (0, 0), "tr": (8, 0), "bl": (0, 8), "br": (8, 8)}  # family = where the square is


def synthetic(pairs, per_pair: int, seed: int) -> LabelledImages:
    """16 px white images with one coloured square: separable by colour (style) and place (family)."""
    rng = np.random.default_rng(seed)
    pixels, styles, families = [], [], []
    for style, family in pairs:
        for _ in range(per_pair):
            image = np.full((16, 16, 3), 255, np.uint8)
            x, y = QUADRANTS[family]
            dx, dy = rng.integers(0, 3, 2)
            image[y + dy : y + dy + 5, x + dx : x + dx + 5] = COLOURS[style]
            pixels.append(torch.from_numpy(image).permute(2, 0, 1))
            styles.append(style)
            families.append(family)
    n = len(styles)
    return LabelledImages(torch.stack(pixels), styles, families, [f"k{i}" for i in range(n)],
                          [f"{f}, {s} style" for s, f in zip(styles, families)], [{} for _ in range(n)])


ALL = [(s, f) for s in COLOURS for f in QUADRANTS]


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    train = synthetic(ALL, 6, seed=0)
    net, log = train_classifier(train, steps=150, seed=0, batch_size=32, lr=5e-3,
                                config=ClassifierConfig(resolution=16, width=8, feature_dim=32), progress=False)
    return net, log, train


def test_classifier_learns_a_separable_set(trained):
    net, log, _ = trained
    assert log["last_loss"] < log["first_loss"] / 4
    test = synthetic(ALL, 5, seed=1)  # fresh images (other offsets)
    acc = emoji.accuracy(predict(net, test.pixels), test.styles, test.families)
    assert acc["style"] >= 0.95 and acc["family"] >= 0.95 and acc["joint"] >= 0.9


def test_a_killed_judge_run_resumes_to_the_weights_of_an_unbroken_one(tmp_path):
    torch.set_num_threads(1)
    data = synthetic(ALL, 3, seed=2)
    kw = dict(steps=12, seed=3, batch_size=16, lr=5e-3, config=ClassifierConfig(resolution=16, width=8, feature_dim=32),
              progress=False)
    whole, log = train_classifier(data, **kw)
    folder = tmp_path / "ckpt"

    class Killed(Exception):
        pass

    seen = []

    def killing_save(*args, **kwargs):  # the process dies right after its step-5 checkpoint
        path = real_save(*args, **kwargs)
        seen.append(args[1])
        if args[1] == 5:
            raise Killed
        return path

    import pixcade.eval.emoji_classifier as ec

    real_save = ec.save_checkpoint
    ec.save_checkpoint = killing_save
    try:
        with pytest.raises(Killed):
            train_classifier(data, **kw, checkpoints=folder, checkpoint_every=5)
    finally:
        ec.save_checkpoint = real_save
    resumed, again = train_classifier(data, **kw, checkpoints=folder, checkpoint_every=5)
    assert seen == [5]
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert again["last_loss"] == log["last_loss"] and again["first_loss"] == log["first_loss"]
    # Finished: running it again trains nothing and returns the same weights.
    done, _ = train_classifier(data, **kw, checkpoints=folder, checkpoint_every=5)
    assert all(torch.equal(t, done.state_dict()[k]) for k, t in whole.state_dict().items())
    # A checkpoint of another run (other steps) is refused by name, not resumed.
    with pytest.raises(PixcadeError, match="another judge run .*differs in: steps"):
        train_classifier(data, **{**kw, "steps": 20}, checkpoints=folder)


def test_learning_rate_warms_up_then_decays_for_any_step_count():
    from pixcade.eval.emoji_classifier import one_cycle_lr

    for steps in (1, 2, 10, 1000):
        rates = [one_cycle_lr(k, steps, 1.0) for k in range(steps)]
        assert rates[0] == pytest.approx(1 / 25) and max(rates) <= 1.0 and min(rates) > 0
    rates = [one_cycle_lr(k, 1000, 1.0) for k in range(1000)]
    assert rates[100] == pytest.approx(1.0) and rates[-1] < 1e-3
    assert all(a < b for a, b in zip(rates[:100], rates[1:101]))
    assert all(a >= b for a, b in zip(rates[100:], rates[101:]))


def test_weights_round_trip_with_digest(trained, tmp_path):
    net, _, train = trained
    digest = save_classifier(tmp_path / "j.safetensors", net, {"seed": 0})
    again, info = load_classifier(tmp_path / "j.safetensors")
    assert info["digest"] == digest and info["seed"] == 0
    a, b = predict(net, train.pixels), predict(again, train.pixels)
    assert a["styles"] == b["styles"] and np.array_equal(a["features"], b["features"])


def test_fd_of_identical_sets_is_zero_and_kid_unbiased_near_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    assert abs(fid_from_features(x, x.copy())) < 1e-6
    same = kernel_inception_distance(x, rng.normal(size=(400, 8)), subsets=50, subset_size=200)
    shifted = kernel_inception_distance(x, rng.normal(size=(400, 8)) + 0.5, subsets=50, subset_size=200)
    assert abs(same[0]) < 3 * same[1] + 1e-3  # unbiased: centred on 0, not on a positive bias
    assert shifted[0] > 10 * abs(same[0]) and shifted[0] > 3 * shifted[1]


def test_augment_keeps_white_and_colours_and_never_mirrors():
    x = torch.full((4, 3, 32, 32), 1.0)
    x[:, 0, 8:24, 8:24], x[:, 1:, 8:24, 8:24] = 0.5, -0.5  # one flat colour on white
    y = augment(x, torch.Generator().manual_seed(0))
    assert torch.allclose(y[:, :, 0, 0], torch.ones(4, 3), atol=1e-6)
    centre = y[:, :, 15:17, 15:17]
    assert torch.allclose(centre[:, 0], torch.full_like(centre[:, 0], 0.5), atol=1e-5)
    # every pixel is a mix of the square's colour and white: hue never changes
    mix = (y[:, 0] - 1) / (0.5 - 1)
    assert torch.allclose(y[:, 1], 1 + mix * (-0.5 - 1), atol=1e-5)
    arrow = torch.full((1, 3, 32, 32), 1.0)
    arrow[:, :, 14:18, 2:12] = -1  # mass on the left stays on the left
    z = augment(arrow.repeat(8, 1, 1, 1), torch.Generator().manual_seed(1))
    assert ((z[:, 0, :, :16] < 0).sum((1, 2)) > (z[:, 0, :, 16:] < 0).sum((1, 2))).all()


def test_ssim_theory():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (48, 48, 3)).astype(np.uint8)
    a = Image.fromarray(base).filter(ImageFilter.GaussianBlur(2))
    assert emoji.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    arr = np.asarray(a).astype(float)
    noisy = [Image.fromarray(np.clip(arr + rng.normal(0, s, arr.shape), 0, 255).astype(np.uint8)) for s in (5, 20, 60)]
    values = [emoji.ssim(n, a) for n in noisy]
    assert values[0] > values[1] > values[2] and values[0] < 1
    assert emoji.ssim(noisy[1], a) == pytest.approx(emoji.ssim(a, noisy[1]))
    # A constant image against itself shifted in brightness: only the luminance term is left.
    flat, brighter = Image.new("RGB", (32, 32), (100,) * 3), Image.new("RGB", (32, 32), (120,) * 3)
    c1 = (0.01 * 255) ** 2
    assert emoji.ssim(flat, brighter) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1))


def test_nearest_finds_the_copy():
    train = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    idx, db = emoji.nearest(train[[7, 30]], train, chunk=16)
    assert idx.tolist() == [7, 30] and (db > 50).all()


def test_judge_sr_perfect_upsampler_beats_bicubic():
    rng = np.random.default_rng(0)
    truths = [Image.fromarray(rng.integers(0, 256, (256, 256, 3)).astype(np.uint8)).filter(ImageFilter.GaussianBlur(3))
              for _ in range(2)]
    report, images = emoji.judge_sr(lambda lows, caps: truths, truths, ["a", "b"], ["test_cs", "val_cs"])
    assert report["all"]["ssim_sr"] == pytest.approx(1.0) and report["all"]["psnr_gain_db"] > 5
    assert report["test_cs"]["n"] == 1 and images["lowres"][0].size == (64, 64)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("emoji")
    out = root / "data"
    build_emoji_dataset(out, make_packages(root / "npm"), fetch=False, held_out=HELD_OUT, progress=False)
    return out


def test_cli_train_then_judge_real_held_out_images_as_generated(dataset, tmp_path, capsys):
    weights = tmp_path / "judge.safetensors"
    assert pixcade_main(["eval", "emoji", "train", "--data", str(dataset), "--out", str(weights),
                         "--steps", "3", "--batch-size", "8", "--width", "8",
                         "--checkpoints", str(tmp_path / "ck")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ceiling"]["all"]["n"] == 2 and len(report["sha256"]) == 64 and report["training"]["width"] == 8
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["step-00000003"]
    assert pixcade_main(["eval", "emoji", "train", "--data", str(dataset), "--out", str(weights), "--width", "0"]) == 2
    assert "--width must be at least 1" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert pixcade_main(["eval", "emoji", "train", "--data", str(dataset), "--out", str(weights),
                         "--checkpoints", str(tmp_path / "a-file")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot create folder" in err
    # A "model" whose images are the real held-out images scores exactly the ceiling, FD ~ 0.
    gen = tmp_path / "gen"
    gen.mkdir()
    held = read_manifest(dataset / "base-64/heldout.jsonl")
    lines = []
    for i, row in enumerate(held.extra):
        shutil.copy(dataset / "base-64" / row["image"], gen / f"{i}.png")
        lines.append(json.dumps({"index": i, "prompt": row["caption"], "images": [f"{i}.png"]}))
    (gen / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    assert pixcade_main(["eval", "emoji", "generated", "--data", str(dataset), "--classifier", str(weights),
                         "--images", str(gen)]) == 0
    out = json.loads(capsys.readouterr().out)
    judged = out["judges"][str(weights)]["models"][str(gen)]
    assert judged["accuracy"]["all"]["generated"] == judged["accuracy"]["all"]["ceiling"]
    assert abs(judged["distance"]["fd"]) < 1e-5  # the same images: 0 up to the matrix square root's rounding
    per = judged["per_image"]  # what the judge read in each image, in the folder's order
    assert [r["prompt"] for r in per] == [row["caption"] for row in held.extra]
    assert [r["style_right"] for r in per] == [r["style"] == s for r, s in zip(per, held.styles)]
    acc = judged["accuracy"]["all"]["generated"]
    assert np.mean([r["style_right"] for r in per]) == acc["style"]
    assert np.mean([r["style_right"] and r["family_right"] for r in per]) == acc["joint"]
    # The fixture's styles all draw the same square, so each held-out image IS a copy of
    # the same emoji in another style: the check must say so, for real and "generated" alike.
    copies = out["near_copies"][str(gen)]
    assert copies["generated"]["of_another_style"] == 2
    assert copies["real_held_out"] == copies["generated"]
    assert out["rankings_agree"] == {"joint": True, "fd": True}
    # Without --classifier the shipped judges read the folder, one report each.
    assert pixcade_main(["eval", "emoji", "generated", "--data", str(dataset), "--images", str(gen)]) == 0
    assert list(json.loads(capsys.readouterr().out)["judges"]) == [str(p) for p in shipped_judges()]
    (gen / "prompts.jsonl").write_text(json.dumps({"prompt": "a cat, Twemoji style", "images": ["0.png"]}) + "\n")
    assert pixcade_main(["eval", "emoji", "generated", "--data", str(dataset), "--classifier", str(weights),
                         "--images", str(gen)]) == 2
    assert "not held-out emoji prompts" in capsys.readouterr().err


def test_to_unit_matches_the_trainers_scale():
    from pixcade.data.transforms import to_tensor

    image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None]
    assert torch.allclose(to_unit(pixels)[0], to_tensor(image), atol=1e-6)


@pytest.mark.parametrize("line", ['{"image": "a.png"', '{"image": "a.png", "caption": "x"}', '[1, 2]'],
                         ids=["truncated", "no-split", "not-object"])
def test_sr_eval_names_a_bad_manifest_row_in_one_line(tmp_path, capsys, line):
    manifest = tmp_path / "sr-256" / "heldout.jsonl"
    manifest.parent.mkdir()
    manifest.write_text(line + "\n")
    assert pixcade_main(["eval", "emoji", "sr", "--data", str(tmp_path), "--model", str(tmp_path / "none")]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{manifest}:1: not an emoji manifest row" in err, err


def test_sr_cli_judges_a_64_to_256_stage_and_records_the_model(dataset, tmp_path, capsys):
    torch.manual_seed(0)
    sr = StageConfig(name="sr", resolution=256, lowres_resolution=64, unet=get_preset("tiny-sr", text_dim=384),
                     sampling=SamplingSettings(sampler="ddim", steps=1, guidance_weight=1.0, threshold="static"))
    model = tmp_path / "sr-model"
    base = StageConfig(name="base", resolution=64, unet=get_preset("tiny-base", text_dim=384))  # not run here
    stages = [Stage(base), Stage(sr)]
    perturb(stages[1].net)  # its zero-initialised output layer too, so the output depends on the input
    Cascade(stages, text_encoder="minilm", max_length=32).save_pretrained(model)
    assert pixcade_main(["eval", "emoji", "sr", "--data", str(dataset), "--model", str(model)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == str(model) and len(report["model_digest"]) == 64 and report["stage"] == "sr"
    assert report["all"]["n"] == 1 and report["test_cs"]["n"] == 1  # the fixture's one 256 px held-out row
    assert report["split"] == "all" and report["settings"]["aug_level"] == 0.0
    assert pixcade_main(["eval", "emoji", "sr", "--data", str(dataset), "--model", str(model),
                         "--set", "aug_level=0.5"]) == 0
    augmented = json.loads(capsys.readouterr().out)
    assert augmented["settings"]["aug_level"] == 0.5
    assert augmented["results"][0]["psnr_sr"] != report["results"][0]["psnr_sr"]  # the setting reached the stage
    assert augmented["results"][0]["psnr_bicubic"] == report["results"][0]["psnr_bicubic"]
    assert pixcade_main(["eval", "emoji", "sr", "--data", str(dataset), "--model", str(model), "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
    assert pixcade_main(["eval", "emoji", "sr", "--data", str(dataset), "--model", str(model), "--split", "val_cs"]) == 2
    assert "has no rows of split 'val_cs'" in capsys.readouterr().err  # the fixture's val_cs row is 64 px only
    row = report["results"][0]
    assert row["caption"] == "rocket, Twemoji style" and report["all"]["psnr_gain_db"] == pytest.approx(
        row["psnr_sr"] - row["psnr_bicubic"])
