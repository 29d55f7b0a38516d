"""`pixcade generate`: files written, per-stage options, sharding across ranks, resuming, errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pixcade.pipeline.shipped as shipped
from pixcade.cli import main
from tiny_cascade import BASE_RES, SR_RES, save_tiny_cascade

PROMPTS = ["a red square", "two blue circles", "a green triangle"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_cascade(tmp_path_factory.mktemp("model"))


@pytest.fixture
def no_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def generate(model: Path, out: Path, *args: str) -> int:
    return main(["generate", "--model", str(model), "--out", str(out), "--device", "cpu", *args])


def pngs(directory: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(directory.glob("p*.png"))}


def test_writes_images_grid_and_index(model: Path, tmp_path: Path, no_shard: None,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert generate(model, out, *PROMPTS[:2], "--n", "2", "--seed", "3", "--save-stages") == 0
    images = pngs(out)
    assert list(images) == ["p0000_i00.png", "p0000_i01.png", "p0001_i00.png", "p0001_i01.png"]
    assert {a.shape for a in images.values()} == {(SR_RES, SR_RES, 3)}
    stage_images = sorted((out / "stages" / "base").iterdir())
    assert [p.name for p in stage_images] == list(images)
    assert Image.open(stage_images[0]).size == (BASE_RES, BASE_RES)
    assert not (out / "stages" / "sr").exists()  # the final stage's images are the outputs
    grid = Image.open(out / "grid.png")
    assert grid.size == (2 * (SR_RES + 2) + 2, 2 * (SR_RES + 2) + 2)  # 2 prompts x 2 images
    index = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert index == [
        {"index": 0, "prompt": PROMPTS[0], "images": ["p0000_i00.png", "p0000_i01.png"]},
        {"index": 1, "prompt": PROMPTS[1], "images": ["p0001_i00.png", "p0001_i01.png"]},
    ]
    captured = capsys.readouterr()
    assert "wrote 4 images" in captured.out
    assert "base" in captured.err and "sr" in captured.err  # a progress bar per stage
    # Same seed into a fresh directory: the same files, byte for byte in pixels.
    assert generate(model, tmp_path / "again", *PROMPTS[:2], "--n", "2", "--seed", "3") == 0
    again = pngs(tmp_path / "again")
    assert all(np.array_equal(images[k], again[k]) for k in images)


def test_prompts_file_stage_subsets_and_per_stage_options(model: Path, tmp_path: Path, no_shard: None) -> None:
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS) + "\n\n")
    out = tmp_path / "base_only"
    assert generate(model, out, "--prompts", str(prompts_file), "--stop-after", "base",
                    "--sampler", "ddpm", "--steps", "3", "--threshold", "none", "--guidance", "1") == 0
    assert len(pngs(out)) == 3 and Image.open(out / "p0002_i00.png").size == (BASE_RES, BASE_RES)
    run = json.loads((out / "run.json").read_text())
    assert list(run["options"]) == ["base"]
    assert run["options"]["base"] == {"sampler": "ddpm", "steps": 3, "guidance_weight": 1.0,
                                      "threshold": "none", "aug_level": 0.0, "start": 1.0, "spacing": None, "sampler_args": {}, "dtype": "auto"}

    out2 = tmp_path / "sr_only"
    assert generate(model, out2, "a red square", "--stages", "sr", "--start-image", str(out / "p0000_i00.png"),
                    "--sampler", "ddim", "--steps", "2", "--aug-level", "0", "--threshold", "dynamic:95") == 0
    assert Image.open(out2 / "p0000_i00.png").size == (SR_RES, SR_RES)

    out3 = tmp_path / "mixed"
    assert generate(model, out3, "a red square", "--sampler", "base=ddpm,sr=ddim", "--steps", "2,sr=1",
                    "--aug-level", "sr=0.3", "--guidance", "base=2") == 0
    opts = json.loads((out3 / "run.json").read_text())["options"]
    assert (opts["base"]["sampler"], opts["sr"]["sampler"]) == ("ddpm", "ddim")
    assert (opts["base"]["steps"], opts["sr"]["steps"]) == (2, 1)
    assert (opts["base"]["guidance_weight"], opts["sr"]["guidance_weight"]) == (2.0, 2.0)  # sr: its default
    assert opts["sr"]["aug_level"] == 0.3


def test_two_ranks_share_the_work_and_match_one_rank(model: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    args = (*PROMPTS, "--n", "2", "--batch-size", "2", "--seed", "11", "--steps", "1", "--sampler", "ddpm")
    monkeypatch.setenv("WORLD_SIZE", "2")
    written = {}
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        before = set(pngs(tmp_path / "shared")) if (tmp_path / "shared").exists() else set()
        assert generate(model, tmp_path / "shared", *args) == 0
        written[rank] = set(pngs(tmp_path / "shared")) - before
    # 6 images in 3 batches of 2: rank 0 gets batches 0 and 2, rank 1 batch 1.
    assert written["1"] == {"p0001_i00.png", "p0001_i01.png"}
    assert written["0"] == {"p0000_i00.png", "p0000_i01.png", "p0002_i00.png", "p0002_i01.png"}
    assert "(rank 0 of 2)" in capsys.readouterr().out
    assert (tmp_path / "shared" / "grid.png").is_file()  # the last rank to finish wrote it
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert generate(model, tmp_path / "single", *args) == 0
    shared, single = pngs(tmp_path / "shared"), pngs(tmp_path / "single")
    assert shared.keys() == single.keys() and len(single) == 6
    assert all(np.array_equal(shared[k], single[k]) for k in single)  # even with DDPM's fresh noise


def test_resume_skips_finished_images(model: Path, tmp_path: Path, no_shard: None,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    args = (*PROMPTS[:2], "--n", "2", "--batch-size", "2", "--seed", "5", "--steps", "1")
    out = tmp_path / "out"
    assert generate(model, out, *args) == 0
    first = pngs(out)
    # Interrupted run: one image never renamed into place (a stale temp file), one batch whole.
    (out / "p0000_i01.png").rename(out / ".p0000_i01.png.tmp-999")
    (out / ".p0000_i01.png.tmp-999").write_bytes(b"partial")
    (out / "grid.png").unlink()
    stamp = {name: (out / name).stat().st_mtime_ns for name in first if name != "p0000_i01.png"}
    capsys.readouterr()
    assert generate(model, out, *args) == 0
    assert "wrote 1 images" in capsys.readouterr().out
    again = pngs(out)
    assert np.array_equal(again["p0000_i01.png"], first["p0000_i01.png"])
    assert all((out / name).stat().st_mtime_ns == t for name, t in stamp.items())  # untouched
    assert (out / "grid.png").is_file()
    # A different run into the same directory is refused rather than mixed in.
    assert generate(model, out, *PROMPTS[:2], "--n", "2", "--batch-size", "2", "--seed", "6", "--steps", "1") == 2
    assert "holds images of a different run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no prompts given"),
        (["x", "--n", "0"], "--n must be at least 1, got 0"),
        (["x", "--steps", "0"], "steps must be an integer >= 1, got 0"),
        (["x", "--guidance", "-1"], "guidance weight must be >= 0, got -1.0"),
        (["x", "--sampler", "euler"], "unknown sampler 'euler'"),
        (["x", "--threshold", "clip"], "stage 'base'.*clip"),
        (["x", "--steps", "base=x"], "stage 'base': steps: cannot read 'x' as int"),
        (["x", "--steps", "sr2=3"], "--steps: unknown stage 'sr2'"),
        (["x", "--aug-level", "2"], "noise-augmentation level must be in \\[0, 1\\]"),
        (["x", "--stop-after", "nope"], "unknown stage 'nope'"),
        (["x", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["x", "--n", "two"], "argument --n: invalid int value"),
        (["--prompts", "missing.txt"], "prompts file missing.txt not found"),
    ],
)
def test_bad_input_is_one_line_exit_2(model: Path, tmp_path: Path, no_shard: None,
                                      capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert generate(model, tmp_path / "out", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pixcade generate: error: ") and "\n" not in err
    assert re.search(message, err), err


def _model_copy(model: Path, dest: Path) -> Path:
    dest.mkdir()
    for p in model.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    return dest


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "sr.safetensors").unlink(), r"stage 'sr': weights file .*sr\.safetensors not found"),
        (lambda d: (d / "base.safetensors").write_bytes(b"\x00" * 40), r"stage 'base': .* not a readable safetensors"),
        (lambda d: (d / "cascade.json").write_text("{"), r"cascade\.json: not valid JSON"),
    ],
)
def test_broken_model_directory(model: Path, tmp_path: Path, no_shard: None,
                                capsys: pytest.CaptureFixture[str], damage, message: str) -> None:
    broken = _model_copy(model, tmp_path / "broken")
    damage(broken)
    assert generate(broken, tmp_path / "out", "x") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert re.search(message, err), err


def test_shipped_model_missing_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(shipped.resources, "files", lambda package: tmp_path)
    assert main(["generate", "x", "--out", str(tmp_path / "out")]) == 2
    assert "the shipped default model is missing" in capsys.readouterr().err


def test_help_documents_per_stage_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "base=dpm++,sr=ddim" in text and "--steps 30,sr=20" in text and "torchrun" in text


def test_exit_status_through_a_real_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    proc = subprocess.run(
        [sys.executable, "-m", "pixcade.cli", "generate", "--out", str(tmp_path / "o"), "--n", "0", "x"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "pixcade generate: error: --n must be at least 1, got 0"
