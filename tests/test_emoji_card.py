"""scripts/emoji_card.py: the emoji model's card from the files the real commands write, every
number read from them and every verdict computed against the judges' ceilings."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from emoji_fixtures import HELD_OUT, make_packages
from pixcade.cli import main as pixcade_main
from pixcade.data.emoji.build import build_emoji_dataset
from tiny_cascade import save_tiny_cascade
from train_support import REPO

sys.path.insert(0, str(REPO / "scripts"))  # emoji_card imports model_card's helpers
spec = importlib.util.spec_from_file_location("emoji_card", REPO / "scripts" / "emoji_card.py")
emoji_card = importlib.util.module_from_spec(spec)
spec.loader.exec_module(emoji_card)


def run(*argv):
    assert pixcade_main(list(argv)) == 0


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Everything the card reads, made by the real commands on the fixture packages and a tiny model."""
    root = tmp_path_factory.mktemp("emoji-card")
    data = root / "data"
    build_emoji_dataset(data, make_packages(root / "npm"), fetch=False, held_out=HELD_OUT, progress=False)
    held = root / "heldout.jsonl"
    held.write_text("".join(json.dumps({"style": h.style, "key": h.key, "split": h.split, "prompt": h.prompt}) + "\n"
                            for h in HELD_OUT))
    run("data", "emoji-audit", "--data", str(data), "--held-out", str(held), "--out", str(root / "audit.json"))
    run("eval", "emoji", "train", "--data", str(data), "--out", str(root / "judge.safetensors"), "--steps", "2",
        "--batch-size", "4", "--width", "8", "--report", str(root / "judge.json"))
    model = save_tiny_cascade(root / "model")
    common = ["eval", "emoji", "sweep", "--model", str(model), "--data", str(data), "--classifier",
              str(root / "judge.safetensors"), "--split", "all", "--set", "steps=1"]
    run(*common, "--out", str(root / "test"))
    run(*common, "--vary", "sr.aug_level=0,0.3", "--out", str(root / "ablation"))
    run("eval", "emoji", "grid", "--model", str(model), "--data", str(data), "--split", "all",
        "--out", str(root / "grid.png"))
    train_run = root / "base-run"  # a run directory as `pixcade train` leaves it
    train_run.mkdir()
    train = {"batch_size": 32, "lr": 3e-4, "seed": 1, "ema_decay": 0.999, "log_every": 25}
    (train_run / "config.json").write_text(json.dumps(
        {"stage": "base", "config": {"stages": [{"stage": {"name": "base"}, "train": train}]}}))
    (train_run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"step": 25, "time": 0.0, "loss": 0.3, "images_per_s": 10.0},
        {"step": 50, "time": 80.0, "loss": 0.1, "images_per_s": 10.0})))
    return root, data, model, train_run


def test_card_reads_every_report_and_computes_the_verdicts(outputs, tmp_path, capsys):
    root, data, model, train_run = outputs
    out = tmp_path / "card" / "MODEL_CARD.md"
    notes = tmp_path / "notes.md"
    notes.write_text("- the SR stage samples from its noised input.\n")
    assert emoji_card.main([
        "--model", str(model), "--data", str(data), "--audit", str(root / "audit.json"),
        "--judge", str(root / "judge.json"), "--run", str(train_run), "--config", "configs/emoji-phase1.json",
        "--test", str(root / "test" / "sweep.json"), "--ablation", str(root / "ablation" / "sweep.json"),
        "--grid", str(root / "grid.png"), "--ablation-grid", str(root / "ablation" / "grid.png"),
        "--notes", str(notes), "--out", str(out)]) == 0
    text = out.read_text()
    summary = json.loads((data / "summary.json").read_text())
    tw = summary["styles"]["twemoji"]
    assert (f"| twemoji | `@twemoji/svg@15.0.0` | {tw['files']:,} | {tw['train_images']:,} | "
            f"{tw['held_out_images']:,} | {tw['merged_keys']:,} |") in text
    assert "naming a held-out key, 0 images with a held-out image's pixels" in text and "(excluded)." in text
    judge = json.loads((root / "judge.json").read_text())
    c = judge["ceiling"]["all"]
    assert f"| `judge` | 0 | {judge['sha256'][:12]} | 2 | {c['style']:.3f} / {c['family']:.3f} / " in text
    # Training: 50 steps of 32 at 10 images/s = 160 s.
    assert "| base | 50 | 32 | 1,600 | 1 | 0.0003 | 0.999 | 0:02:40 | 0:01:20 | 0.2000 |" in text
    assert f"pixcade train --config configs/emoji-phase1.json --stage base --out {train_run}" in text

    report = json.loads((root / "test" / "sweep.json").read_text())
    row = report["summary"][0]
    g, ceil = row["generated"], row["ceiling"]
    style_ok = g["style"] >= 0.8 * ceil["style"]
    joint_ok = g["joint"] >= 0.5 * ceil["joint"]
    assert (f"| all | `judge` | {g['style']:.3f} / {ceil['style']:.3f} "
            f"({'met' if style_ok else '**not met**'}) |") in text
    assert f"({'met' if joint_ok else '**not met**'}) | {row['fd']:.2f} |" in text
    verdict = ("meets the target by every judge" if style_ok and joint_ok
               else "**does not meet the target** (not by every judge)")
    assert f"`all` (2 prompts x 1, seed 0; judged on the final images, at the judge's 64 px): {verdict}." in text
    copies = report["near_copies"]["defaults"]
    base_only = "\n".join(emoji_card.results_section(emoji_card.model_summary(model), [dict(report, stages=["base"])]))
    assert "judged on the base stage's images (`--stages base`)" in base_only
    assert (f"{copies['generated']['of_another_style']} of 2 generated images, against "
            f"{copies['real_held_out']['of_another_style']} of the 2 real held-out images") in text
    assert text.count(f"Measured on this model (digest {report['model_digest'][:12]})") == 3  # test, ablation, grid
    assert "| sr.aug_level | judge |" in text and "| 0.3 | judge |" in text
    assert "![held-out prompts](../" in text and "pixcade eval emoji grid --model" in text
    assert "![Noise-conditioning augmentation: with and without](../" in text
    assert "| Twemoji style | @twemoji/svg@15.0.0 | CC-BY-4.0 |" in text  # the references' licences
    with pytest.raises(SystemExit, match="not by this sweep"):  # a picture of another sweep
        emoji_card.main(["--model", str(model), "--data", str(data), "--judge", str(root / "judge.json"),
                         "--run", str(train_run), "--ablation", str(root / "ablation" / "sweep.json"),
                         "--ablation-grid", str(root / "test" / "grid.png"), "--out", str(tmp_path / "c.md")])
    assert json.loads((out.parent / "training.json").read_text())["runs"][0]["step"] == 50
    assert f"python scripts/emoji_card.py --model {model} --data {data}" in text  # how to make it again
    assert text.endswith("\n## Notes\n\n- the SR stage samples from its noised input.\n")


def test_a_test_report_that_varies_settings_is_refused(outputs, tmp_path):
    root, data, model, train_run = outputs
    with pytest.raises(SystemExit, match="varies settings"):
        emoji_card.main(["--model", str(model), "--data", str(data), "--judge", str(root / "judge.json"),
                         "--run", str(train_run), "--test", str(root / "ablation" / "sweep.json"),
                         "--out", str(tmp_path / "card.md")])


def sr_report(split: str, psnr_sr: float, **settings):
    """An `eval emoji sr` report as it is written (the fields the card reads)."""
    base = {"sampler": "dpm++", "steps": 10, "aug_level": 0.1, "start": 1.0}
    cells = {"n": 60, "psnr_sr": psnr_sr, "psnr_bicubic": 27.0, "psnr_gain_db": psnr_sr - 27.0,
             "ssim_sr": 0.9, "ssim_bicubic": 0.92}
    sets = " ".join(f"--set {k}={v}" for k, v in settings.items())
    return {"command": f"pixcade eval emoji sr --split {split} {sets}",
            "model": "/nowhere/candidate", "model_digest": "ab" * 32, "stage": "sr", "split": split,
            "settings": base | settings, "all": cells}


def test_the_sr_settings_compared_on_val_cs_are_tabled_by_what_differs(outputs):
    model = emoji_card.model_summary(outputs[2])
    reports = [sr_report("val_cs", 27.5), sr_report("val_cs", 29.5, start=0.3),
               sr_report("val_cs", 29.9, start=0.3, steps=3)]
    text = "\n".join(emoji_card.sr_choice_section(reports, model))
    assert "| steps | start | rows |" in text  # only the settings that differ, in the report's order
    assert "| 10 | 1.0 | 60 | 27.50 | 27.00 | +0.50 |" in text and "| 3 | 0.3 | 60 | 29.90 | 27.00 | +2.90 |" in text
    assert text.count("a different model from this one") == 1  # one candidate, said once
    assert all(r["command"] in text for r in reports)
    with pytest.raises(SystemExit, match="chosen on val_cs"):
        emoji_card.sr_choice_section([sr_report("test_cs", 29.0)], model)
    # The shipped SR setting shows in the stages table when the stage starts from its noised input.
    assert " from t = " not in "\n".join(emoji_card.stages_table(model))
    started = dict(model, stages=[dict(s, start=0.3) for s in model["stages"]])
    assert "| dpm++, 2 from t = 0.3 |" in "\n".join(emoji_card.stages_table(started))
