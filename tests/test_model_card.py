"""scripts/model_card.py: the model card from measured outputs (runs, evaluation JSON, grid)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from pixcade.cli import main as pixcade_main
from pixcade.data.render import render
from pixcade.data.shapes import BACKGROUND, HELD_OUT, evaluation_prompts
from cli_support import verbs
from pixcade.eval.provenance import model_digest
from pixcade.nn.grow import grown_config
from pixcade.stage import Stage
from pixcade.train import checkpoint as ckpt
from tiny_cascade import tiny_configs
from train_support import REPO

eval_main = verbs("eval")

sys.path.insert(0, str(REPO / "scripts"))  # model_card imports card_parts
import card_parts  # noqa: E402  (after the path)

spec = importlib.util.spec_from_file_location("model_card", REPO / "scripts" / "model_card.py")
model_card = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model_card)

DAY = 86400.0


def rec(step, time, ips, loss=0.5):
    return {"step": step, "time": time, "loss": loss, "images_per_s": ips}


def test_training_time_counts_windows_not_pauses():
    # batch 4, log every 10 steps: 40 images a window.
    records = [rec(10, 100, 4.0), rec(20, 110, 4.0), rec(30, 120, 4.0),  # 10 s each
               # killed after step 30, resumed a day later from the checkpoint at step 20:
               rec(30, DAY + 5, 8.0), rec(40, DAY + 10, 8.0)]  # 5 s each
    assert card_parts.training_seconds(records, 4, 10) == pytest.approx(40.0)
    # Stopped by a signal at step 25 (unlogged), resumed an hour later: the window to step 30
    # is charged at the resumed rate for all of its 10 steps (40 images at 2 img/s).
    records = [rec(10, 100, 4.0), rec(20, 110, 4.0), rec(30, 3720, 2.0)]
    assert card_parts.training_seconds(records, 4, 10) == pytest.approx(40.0)


def make_run(root: Path, config, steps: int, batch: int, windows: list[tuple[float, float]]) -> Path:
    """A run as the trainer leaves it: config.json, metrics.jsonl (log every 10), a checkpoint."""
    run = root / config.name
    run.mkdir(parents=True)
    train = {"batch_size": batch, "seed": 7, "lr": 2e-3, "ema_decay": 0.99, "log_every": 10, "data": "data/x"}
    (run / "config.json").write_text(json.dumps({"stage": config.name, "config": {
        "text_encoder": "minilm", "max_length": 32,
        "stages": [{"stage": config.to_dict(), "train": train}]}}))
    lines = [json.dumps(rec(10 * (i + 1), t, ips, loss=1.0 / (i + 1))) for i, (t, ips) in enumerate(windows)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n{\"step\": 99")  # a line being written
    net = Stage(config).net
    ckpt.save_checkpoint(run / "checkpoints", steps, model=net.state_dict(), ema=net.state_dict(),
                         optimizer=torch.optim.Adam(net.parameters()).state_dict(),
                         state={"stage": config.to_dict(), "ranks": []}, keep=2)
    return run


class OracleCascade:
    """Draws the truth for seen-pair prompts and nothing for held-out ones (128 px)."""

    def __init__(self):
        from types import SimpleNamespace

        self.stages = [SimpleNamespace(config=c) for c in tiny_configs()]
        self.names = ["base", "sr"]
        self.device = "cpu"

    @classmethod
    def from_pretrained(cls, directory, device="cpu"):
        return cls()

    def stage(self, name):
        return self.stages[self.names.index(name)]

    def generate(self, prompts, n=1, seed=0, batch_size=None, **options):
        scenes = {s.caption: s for n in (6, 30) for s in evaluation_prompts(n, 1 / 3, 1234)}
        blank = Image.new("RGB", (128, 128), BACKGROUND)
        return [blank if scenes[p].held_out else render(scenes[p], 128) for p in prompts for _ in range(n)]


def test_card_from_real_outputs(tmp_path, monkeypatch, capsys):
    from tiny_cascade import save_tiny_cascade

    base_cfg, sr_cfg = tiny_configs()
    # base: 3 windows of 10 steps x 4 images at 4 img/s = 30 s; sr: 2 windows at 8 img/s = 10 s.
    base = make_run(tmp_path / "runs", base_cfg, 30, 4, [(0, 4.0), (10, 4.0), (DAY, 4.0)])
    sr = make_run(tmp_path / "runs", sr_cfg, 20, 4, [(100, 8.0), (105, 8.0)])
    for run in (base, sr):
        assert pixcade_main(["train", "export", "--run", str(run), "--out", str(tmp_path / "exports" / run.name)]) == 0
    model = tmp_path / "model"
    assert pixcade_main(["assemble", str(tmp_path / "exports/base"), str(tmp_path / "exports/sr"),
                         "--out", str(model)]) == 0
    data = tmp_path / "data"
    data.mkdir()
    (data / "0.txt").write_text("a red circle")
    (data / "1.txt").write_text("a yellow star")  # a held-out pair slipped in
    mix = tmp_path / "data-mix"  # a later phase's data: each folder is checked on its own
    mix.mkdir()
    (mix / "0.txt").write_text("a red circle to the left of a blue square")
    capsys.readouterr()

    # Evaluation outputs, written by the real commands.
    real = save_tiny_cascade(tmp_path / "tiny")
    assert eval_main(["sr-psnr", "--model", str(model), "--n", "2", "--out", str(tmp_path / "sr")]) == 0
    assert eval_main(["grid", "--model", str(real), "--prompt", "a red circle", "--out", str(tmp_path / "docs/grid.png")]) == 0
    monkeypatch.setattr("pixcade.eval.cli.Cascade", OracleCascade)
    monkeypatch.setattr("pixcade.diffusion.precision.computes_bf16", lambda device: False)  # auto: fp32
    assert eval_main(["shapes", "--model", "m", "--prompts", "30", "--out", str(tmp_path / "shapes")]) == 0
    assert eval_main(["shapes", "--model", "m", "--prompts", "30", "--dtype", "bf16", "--out", str(tmp_path / "bf16")]) == 0
    bf16_path = tmp_path / "bf16/shapes.json"  # two prompts that pass in fp32 fail in bf16
    bf16 = json.loads(bf16_path.read_text())
    for r in [r for r in bf16["results"] if r["passed"]][:2]:
        r["passed"] = False
    bf16_path.write_text(json.dumps(bf16))
    assert eval_main(["shapes", "--model", "m", "--prompts", "6", "--guidance", "1,8", "--threshold", "static",
                      "--out", str(tmp_path / "sweep")]) == 0
    capsys.readouterr()

    out = tmp_path / "pkg/weights/MODEL_CARD.md"
    notes = tmp_path / "notes.md"
    notes.write_text("- phase 1 ran without coordinates.\n\n")
    assert model_card.main([
        "--model", str(model), "--run", str(base), "--run", str(sr), "--config", "configs/shapes.json",
        "--data", str(data), "--data-command", "pixcade data shapes --out data/x --n 2",
        "--data", str(mix), "--data-command", "pixcade data shapes --out data/mix --n 1 --kind-weights relation=1",
        "--shapes", str(tmp_path / "shapes/shapes.json"), "--shapes-dtype", str(tmp_path / "bf16/shapes.json"), "--sweep", str(tmp_path / "sweep/sweep.json"),
        "--sr-psnr", str(tmp_path / "sr/sr_psnr.json"), "--grid", str(tmp_path / "docs/grid.png"), "--out", str(out),
        "--notes", str(notes),
    ]) == 0
    text = out.read_text()
    shapes = json.loads((tmp_path / "shapes/shapes.json").read_text())
    sr_report = json.loads((tmp_path / "sr/sr_psnr.json").read_text())
    sweep = json.loads((tmp_path / "sweep/sweep.json").read_text())

    # Stages: sizes and trained steps from the assembled model.
    sizes = {p.stem: p.stat().st_size for p in model.glob("*.safetensors")}
    assert "| base | 16 | " in text and f"| {sizes['base'] / 1e6:.1f} | 30 |" in text
    assert "| sr | 16 -> 32 | " in text and f"| {sizes['sr'] / 1e6:.1f} | 20 |" in text
    assert "Final resolution 32 px: **does not meet the target**" in text
    # Training: steps, images seen, seed, time from the windows (not the day-long timestamp span).
    assert "| base | 30 | 4 | 120 | 7 | 0.002 | 0.99 | 0:00:30 | 24:00:00 | 0.6111 |" in text
    assert "| sr | 20 | 4 | 80 | 7 | 0.002 | 0.99 | 0:00:10 | 0:00:05 | 0.7500 |" in text
    assert f"1 of the 2 training captions in `{data}` name one (**NOT excluded**)" in text
    assert f"0 of the 1 training captions in `{mix}` name one (excluded)" in text
    assert all(" ".join(p) in text for p in HELD_OUT)
    assert ("pixcade data shapes --out data/x --n 2\npixcade data shapes --out data/mix --n 1 --kind-weights relation=1\n"
            "pixcade train --config configs/shapes.json --stage base") in text
    exports = tmp_path / "exports"
    assert f"pixcade train export --run {base} --checkpoint step-30 --out {exports}/base" in text
    assert f"pixcade assemble {exports}/base {exports}/sr --out {model}" in text
    assert "2 stages ending at 32 px" in text
    # Evaluation: the numbers and commands of each JSON.
    assert shapes["overall"]["accuracy"] == pytest.approx(2 / 3, abs=0.01) and shapes["held_out"]["accuracy"] == 0
    assert f"Overall {shapes['overall']['accuracy']:.3f}" in text and "held-out pairs 0.000" in text
    assert "on >= 300 prompts: **does not meet the target**" in text  # 30 prompts only
    assert shapes["command"] in text and sr_report["command"] in text and sweep["command"] in text
    assert f"{sr_report['gain_db']:+.2f} dB (target >= +3 dB): **does not meet the target**" in text
    assert "| guidance (base) | static: overall | static: held-out |" in text
    assert "![prompts, base and final images](../../docs/grid.png)" in text
    assert "pixcade eval grid --model" in text
    # Which model each result was measured on: this one (by digest), another, or unknown.
    assert sr_report["model_digest"] == model_digest(model) != model_digest(real)
    assert f"Measured on this model (digest {model_digest(model)[:12]})" in text
    assert f"**Measured on a model, a different model from this one (digest {model_digest(real)[:12]}).**" in text
    assert "**Measured on `m` whose weights were not recorded" in text
    # The same benchmark in bf16, against the default run, prompt by prompt.
    assert shapes["precision"] == {"base": "fp32", "sr": "fp32"} and bf16["precision"] == {"base": "bf16", "sr": "bf16"}
    assert "The run above: fp32." in text and bf16["command"] in text
    assert (f"In bf16: overall {bf16['overall']['accuracy']:.3f}, held-out pairs 0.000 on 30 prompts, against "
            f"{shapes['overall']['accuracy']:.3f} and 0.000 in the run above; 2 image(s) pass only in the run above, "
            "0 only in this one (exact McNemar p = 0.50).") in text
    # The hand-written notes close the card.
    assert text.endswith("\n## Notes\n\n- phase 1 ran without coordinates.\n")


def test_paths_under_home_read_as_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "alice"))
    text = f"--run {tmp_path}/alice/runs/base --out {tmp_path}/alicia/x --data {tmp_path}/alice"
    assert card_parts.home_relative(text) == f"--run ~/runs/base --out {tmp_path}/alicia/x --data {tmp_path}/alice"


def test_model_digest_follows_the_weights_not_the_path(tmp_path):
    import shutil

    from tiny_cascade import save_tiny_cascade

    a = save_tiny_cascade(tmp_path / "a")
    shutil.copytree(a, tmp_path / "copy")
    assert model_digest(a) == model_digest(tmp_path / "copy")
    assert model_digest(save_tiny_cascade(tmp_path / "b", seed=1)) != model_digest(a)
    data = bytearray((a / "sr.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "copy/sr.safetensors").write_bytes(bytes(data))
    assert model_digest(tmp_path / "copy") != model_digest(a)
    assert model_digest(tmp_path / "nowhere") is None


def test_a_result_on_the_candidate_a_model_was_assembled_from_names_the_networks_it_shares(tmp_path, capsys):
    # The shipped model: the candidate's stages with another sampling default, stored in fp16.
    from safetensors.torch import load_file, save_file

    from tiny_cascade import save_tiny_cascade

    candidate = save_tiny_cascade(tmp_path / "candidate")
    shipped = tmp_path / "shipped"
    assert pixcade_main(["assemble", f"{candidate}:base", f"{candidate}:sr", "--set", "base.guidance_weight=7",
                         "--storage", "fp16", "--out", str(shipped)]) == 0
    model = card_parts.model_summary(shipped)
    assert model["digest"] != model_digest(candidate)
    on_candidate = {"model": str(candidate), "model_digest": model_digest(candidate)}

    text = card_parts.measured_on({**on_candidate, "stages": ["base"]}, model)
    assert "which holds this model's base network (checked tensor by tensor" in text and not text.startswith("**")
    assert "holds this model's base and sr networks" in card_parts.measured_on(on_candidate, model)  # a whole-cascade sweep
    assert "holds this model's sr network" in card_parts.measured_on({**on_candidate, "stage": "sr"}, model)

    # One base tensor nudged by one fp16 step: the base is no longer this model's; the SR still is.
    weights = load_file(shipped / "base.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = torch.nextafter(weights[name].view(-1)[0], torch.tensor(9.0, dtype=torch.float16))
    save_file(weights, shipped / "base.safetensors")
    model = card_parts.model_summary(shipped)
    assert card_parts.measured_on({**on_candidate, "stages": ["base"]}, model).startswith(
        f"**Measured on `{candidate}`, a different model")
    assert card_parts.measured_on(on_candidate, model).startswith("**")
    assert "holds this model's sr network" in card_parts.measured_on({**on_candidate, "stage": "sr"}, model)

    # A candidate changed since the result was recorded is not vouched for, whatever it holds now.
    stale = {**on_candidate, "model_digest": "0" * 64, "stage": "sr"}
    assert card_parts.measured_on(stale, model).startswith("**")
    capsys.readouterr()


def test_a_phase_started_from_a_grown_export_shows_the_grow_command(tmp_path, capsys):
    import dataclasses

    base_cfg, _ = tiny_configs()
    first = make_run(tmp_path / "p1", base_cfg, 20, 4, [(0, 4.0), (10, 4.0)])
    export1, grown = tmp_path / "exports/base-p1", tmp_path / "exports/base-p1-grown"
    assert pixcade_main(["train", "export", "--run", str(first), "--checkpoint", "step-20", "--out", str(export1)]) == 0
    assert pixcade_main(["train", "grow", "--from", str(export1), "--out", str(grown)]) == 0
    big = json.loads((grown / "stage.json").read_text())
    assert big["grown_from"] == str(export1) and big["step"] == 20
    second = make_run(tmp_path / "p2", dataclasses.replace(base_cfg, resolution=2 * base_cfg.resolution,
                                                           unet=grown_config(base_cfg.unet)),
                      30, 4, [(100, 8.0), (105, 8.0)])
    conf = json.loads((second / "config.json").read_text())
    conf["config"]["stages"][0]["train"]["init_from"] = str(grown)
    (second / "config.json").write_text(json.dumps(conf))
    assert pixcade_main(["train", "export", "--run", str(second), "--out", str(tmp_path / "exports/base")]) == 0
    model = tmp_path / "model"
    assert pixcade_main(["assemble", str(tmp_path / "exports/base"), "--out", str(model)]) == 0
    capsys.readouterr()
    out = tmp_path / "card.md"
    assert model_card.main(["--model", str(model), "--run", str(first), "--run", str(second),
                            "--config", "configs/shapes.json", "--out", str(out)]) == 0
    # Phase 1 counts up to the step its grown export was taken at; the commands grow it.
    assert "| base (1/2) | 20 | 4 | 80 |" in out.read_text()
    assert (f"pixcade train --config configs/shapes.json --stage base --out {first}\n"
            f"pixcade train export --run {first} --checkpoint step-20 --out {export1}\n"
            f"pixcade train grow --from {export1} --out {grown}\n"
            f"pixcade train --config configs/shapes.json --stage base --out {second} --init-from {grown}") \
        in out.read_text()
    assert json.loads(out.with_name("training.json").read_text())["runs"][1]["grown_from"] == str(export1)


def test_a_stage_trained_in_phases(tmp_path, capsys):
    base_cfg, sr_cfg = tiny_configs()
    # Phase 1 logged on to step 30 after writing the step-20 checkpoint phase 2 starts from.
    first = make_run(tmp_path / "p1", base_cfg, 20, 4, [(0, 4.0), (10, 4.0), (20, 4.0)])
    export1 = tmp_path / "exports/base-p1"
    assert pixcade_main(["train", "export", "--run", str(first), "--checkpoint", "step-20", "--out", str(export1)]) == 0
    second = make_run(tmp_path / "p2", base_cfg, 20, 4, [(100, 8.0), (105, 8.0)])
    conf = json.loads((second / "config.json").read_text())
    conf["config"]["stages"][0]["train"]["init_from"] = str(export1)
    (second / "config.json").write_text(json.dumps(conf))
    sr = make_run(tmp_path / "runs", sr_cfg, 20, 4, [(100, 8.0), (105, 8.0)])
    for run, name in ((second, "base"), (sr, "sr")):
        assert pixcade_main(["train", "export", "--run", str(run), "--out", str(tmp_path / "exports" / name)]) == 0
    model = tmp_path / "model"
    assert pixcade_main(["assemble", str(tmp_path / "exports/base"), str(tmp_path / "exports/sr"), "--out", str(model)]) == 0
    capsys.readouterr()
    out = tmp_path / "card.md"
    assert model_card.main(["--model", str(model), "--run", f"{first}=configs/phase1.json", "--run", str(second),
                            "--run", str(sr), "--config", "configs/shapes.json", "--out", str(out)]) == 0
    text = out.read_text()
    # Phase 1 counts up to the checkpoint phase 2 started from (step 20, two windows), not its last step.
    assert "| base (1/2) | 20 | 4 | 80 | 7 | 0.002 | 0.99 | 0:00:20 |" in text
    assert "| base (2/2) | 20 | 4 | 80 | 7 | 0.002 | 0.99 | 0:00:10 |" in text
    assert "| sr | 20 |" in text
    assert (f"pixcade train --config configs/phase1.json --stage base --out {first}\n"
            f"pixcade train export --run {first} --checkpoint step-20 --out {export1}\n"
            f"pixcade train --config configs/shapes.json --stage base --out {second} --init-from {export1}\n"
            f"pixcade train --config configs/shapes.json --stage sr --out {sr}") in text

    # The card's training.json carries the runs to a machine where their directories are
    # gone: a third phase started from phase 2's export is added to the recorded two.
    record = out.with_name("training.json")
    training = text.split("## Training")[1].split("\n\n")[1].splitlines()[2:]
    rows = [row for row in training if row.startswith("| base (") or row.startswith("| sr |")]
    assert len(rows) == 3
    # Each run records the config it trained with, --config where its --run named none.
    assert [r["config"] for r in json.loads(record.read_text())["runs"]] == [
        "configs/phase1.json", "configs/shapes.json", "configs/shapes.json"]
    for run in (first, second, sr):
        shutil.rmtree(run)
    third = make_run(tmp_path / "p3", base_cfg, 40, 4, [(0, 2.0), (10, 2.0), (20, 2.0), (30, 2.0)])
    conf = json.loads((third / "config.json").read_text())
    conf["config"]["stages"][0]["train"]["init_from"] = str(tmp_path / "exports/base")
    (third / "config.json").write_text(json.dumps(conf))
    assert pixcade_main(["train", "export", "--run", str(third), "--out", str(tmp_path / "exports/base3")]) == 0
    model3 = tmp_path / "model3"
    assert pixcade_main(["assemble", str(tmp_path / "exports/base3"), str(tmp_path / "exports/sr"),
                         "--out", str(model3)]) == 0
    out3 = tmp_path / "card3.md"
    assert model_card.main(["--model", str(model3), "--history", str(record), "--run", f"{third}=configs/phase3.json",
                            "--config", "configs/shapes.json", "--out", str(out3)]) == 0
    text3 = out3.read_text()
    # The recorded rows come back unchanged, relabelled as phases 1 and 2 of 3.
    assert rows[0].replace("(1/2)", "(1/3)") in text3 and rows[1].replace("(2/2)", "(2/3)") in text3
    assert rows[2] in text3
    assert "| base (3/3) | 40 | 4 | 160 | 7 | 0.002 | 0.99 | 0:01:20 |" in text3
    assert (f"pixcade train --config configs/shapes.json --stage base --out {second} --init-from {export1}\n"
            f"pixcade train export --run {second} --checkpoint step-20 --out {tmp_path / 'exports/base'}\n"
            f"pixcade train --config configs/phase3.json --stage base --out {third} "
            f"--init-from {tmp_path / 'exports/base'}\n"
            f"pixcade train --config configs/shapes.json --stage sr --out {sr}") in text3
    assert f"pixcade train export --run {third} --checkpoint step-40" in text3
    # Without the record, the gone phases cannot be shown: a named error, not a traceback.
    with pytest.raises(SystemExit, match="give at least one --run"):
        model_card.main(["--model", str(model3), "--out", str(out3)])
    bad = tmp_path / "bad.json"
    bad.write_text('{"runs": [{"step": 3}]}')
    with pytest.raises(SystemExit, match="bad.json is not a training.json"):
        model_card.main(["--model", str(model3), "--history", str(bad), "--out", str(out3)])


def test_the_assemble_command_sets_what_differs_from_training_even_from_an_unpacked_export(tmp_path, capsys):
    # An export unpacked from a saved cascade (scripts/unpack_cascade.py) carries the cascade's
    # sampling settings, not its training config's: the card's commands export from the run,
    # so its assemble line must still --set what the cascade changed.
    base_cfg, sr_cfg = tiny_configs()
    base = make_run(tmp_path / "runs", base_cfg, 20, 4, [(0, 4.0), (10, 4.0)])
    sr = make_run(tmp_path / "runs", sr_cfg, 20, 4, [(0, 8.0), (10, 8.0)])
    for run in (base, sr):
        assert pixcade_main(["train", "export", "--run", str(run), "--out", str(tmp_path / "exports" / run.name)]) == 0
    first = tmp_path / "first"
    assert pixcade_main(["assemble", str(tmp_path / "exports/base"), str(tmp_path / "exports/sr"), "--out", str(first),
                         "--set", "base.guidance_weight=7", "--set", "sr.steps=3"]) == 0
    spec = importlib.util.spec_from_file_location("unpack_cascade", REPO / "scripts" / "unpack_cascade.py")
    unpack_cascade = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(unpack_cascade)
    assert unpack_cascade.main([str(first), "--out", str(tmp_path / "unpacked")]) == 0
    model = tmp_path / "model"
    assert pixcade_main(["assemble", str(tmp_path / "unpacked/base"), str(tmp_path / "unpacked/sr"),
                         "--out", str(model)]) == 0
    capsys.readouterr()
    out = tmp_path / "card.md"
    assert model_card.main(["--model", str(model), "--run", str(base), "--run", str(sr),
                            "--config", "configs/shapes.json", "--out", str(out)]) == 0
    line = next(ln for ln in out.read_text().splitlines() if ln.startswith("pixcade assemble"))
    assert line.endswith(f"--out {model} --set base.guidance_weight=7 --set sr.steps=3"), line
