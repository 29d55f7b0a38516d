"""`pixcade eval sr-psnr`: an SR stage given the true low-res render, PSNR vs bicubic."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pixcade.data.render import render
from pixcade.data.shapes import evaluation_prompts
from pixcade.errors import PixcadeError
from cli_support import verbs
from pixcade.eval.sr_psnr import bicubic, evaluate_sr, markdown_table, psnr
from pixcade.stage import StageConfig
from tiny_cascade import tiny_configs

eval_main = verbs("eval")


def test_psnr_matches_its_definition():
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    b = a.copy()
    b[:4] = 10  # half the pixels off by 10: MSE 50
    assert psnr(Image.fromarray(b), Image.fromarray(a)) == pytest.approx(10 * math.log10(255**2 / 50))
    # Identical: the MSE of one channel of one pixel off by one, the largest finite PSNR.
    cap = 10 * math.log10(255**2 * a.size)
    assert psnr(Image.fromarray(a), Image.fromarray(a)) == pytest.approx(cap)
    c = a.copy()
    c[0, 0, 0] = 1
    assert psnr(Image.fromarray(c), Image.fromarray(a)) == pytest.approx(cap)
    with pytest.raises(PixcadeError, match="one size"):
        psnr(Image.fromarray(a), Image.fromarray(a[:4]))
    # Bicubic reproduces a constant image exactly.
    flat = Image.new("RGB", (16, 16), (200, 30, 90))
    assert psnr(bicubic(flat, 64), Image.new("RGB", (64, 64), (200, 30, 90))) == pytest.approx(
        10 * math.log10(255**2 * 64 * 64 * 3))


class FakeCascade:
    """A base stage and an "SR" stage (16 -> 64 px); the SR hands back a chosen image per caption."""

    def __init__(self, answer):
        base, sr = tiny_configs()
        sr = StageConfig.from_dict({**sr.to_dict(), "resolution": 64})
        self.stages = [SimpleNamespace(config=base), SimpleNamespace(config=sr)]
        self.answer = answer
        self.calls = []
        self.device = "cpu"

    def stage(self, name):
        return next(s for s in self.stages if s.config.name == name)

    def generate(self, prompts, seed=0, stages=None, start_image=None, batch_size=None, progress=True):
        self.calls.append({"stages": stages, "sizes": [im.size for im in start_image], "seed": seed})
        return [self.answer(p, low) for p, low in zip(prompts, start_image)]


SCENES = evaluation_prompts(6, 1 / 3, 1234)
BY_CAPTION = {s.caption: s for s in SCENES}


def test_an_sr_that_returns_the_truth_beats_bicubic_and_bicubic_ties():
    oracle = FakeCascade(lambda p, low: render(BY_CAPTION[p], 64))
    report, images = evaluate_sr(oracle, SCENES, seed=7, progress=False)
    assert oracle.calls == [{"stages": ["sr"], "sizes": [(16, 16)] * 6, "seed": 7}]
    # The start images are the true 16 px renders.
    assert all(np.array_equal(np.asarray(a), np.asarray(render(s, 16))) for a, s in zip(images["lowres"], SCENES))
    assert report["stage"] == "sr" and (report["lowres_resolution"], report["resolution"]) == (16, 64)
    assert report["psnr_sr"] == pytest.approx(report["psnr_cap_db"])
    assert report["psnr_bicubic"] < report["psnr_sr"] - 3 and report["sr_beats_bicubic"] == 6
    assert report["gain_db"] == pytest.approx(report["psnr_sr"] - report["psnr_bicubic"])
    assert report["seen"]["n"] + report["held_out"]["n"] == 6 and report["held_out"]["n"] == 2
    assert report["psnr_bicubic"] == pytest.approx(np.mean([r["psnr_bicubic"] for r in report["results"]]))
    json.dumps(report, allow_nan=False)  # finite, JSON-safe

    # An "SR" that is bicubic upsampling gains exactly nothing.
    plain = FakeCascade(lambda p, low: bicubic(low, 64))
    same, _ = evaluate_sr(plain, SCENES, progress=False)
    assert same["gain_db"] == 0.0 and same["sr_beats_bicubic"] == 0
    assert same["psnr_bicubic"] == report["psnr_bicubic"]
    md = markdown_table(report)
    assert "16 -> 64 px" in md and f"{report['gain_db']:+.2f}" in md

    with pytest.raises(PixcadeError, match="not a super-resolution stage"):
        evaluate_sr(oracle, SCENES, "base")


def test_sr_psnr_cli_with_a_real_tiny_cascade(tmp_path, capsys):
    from tiny_cascade import save_tiny_cascade

    model = save_tiny_cascade(tmp_path / "model")
    out = tmp_path / "out"
    assert eval_main(["sr-psnr", "--model", str(model), "--n", "3", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((out / "sr_psnr.json").read_text())
    assert report["command"] == f"pixcade eval sr-psnr --model {model} --n 3 --out {out}"
    assert report["stage"] == "sr" and report["n"] == 3 and (report["lowres_resolution"], report["resolution"]) == (16, 32)
    # Random weights: far from the truth, and certainly worse than bicubic.
    assert 0 < report["psnr_sr"] < report["psnr_bicubic"] < report["psnr_cap_db"]
    assert Image.open(out / "examples.png").size == (4 * 34 + 2, 3 * 34 + 2)
    assert "SR - bicubic" in (out / "sr_psnr.md").read_text()
    with pytest.raises(PixcadeError, match="'base' is not a super-resolution stage"):
        eval_main(["sr-psnr", "--model", str(model), "--stage", "base", "--n", "1", "--out", str(out)])
    # --dtype: the precision the SR stage ran in is recorded; bf16 moves the outputs a little.
    capsys.readouterr()
    assert eval_main(["sr-psnr", "--model", str(model), "--n", "3", "--dtype", "fp32", "--out", str(out / "a")]) == 0
    assert eval_main(["sr-psnr", "--model", str(model), "--n", "3", "--dtype", "bf16", "--out", str(out / "b")]) == 0
    fp32, bf16 = (json.loads((out / d / "sr_psnr.json").read_text()) for d in ("a", "b"))
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    saved = {"fp32": fp32, "bf16": bf16}[report["precision"]]  # auto: bf16 where the CPU computes it natively
    assert saved["psnr_sr"] == pytest.approx(report["psnr_sr"], abs=1e-9)
    assert fp32["psnr_sr"] != bf16["psnr_sr"] and abs(fp32["psnr_sr"] - bf16["psnr_sr"]) < 1.0
    with pytest.raises(PixcadeError, match="dtype"):
        eval_main(["sr-psnr", "--model", str(model), "--n", "1", "--dtype", "fp64", "--out", str(out / "c")])
