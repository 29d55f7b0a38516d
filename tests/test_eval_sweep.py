"""`pixcade eval shapes --guidance ... --threshold ...`: the benchmark over a grid of settings."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pixcade.data.render import render
from pixcade.data.shapes import BACKGROUND, evaluation_prompts
from pixcade.errors import PixcadeError
from pixcade.eval.sweep import Axis, axis, cell_label, cell_settings, cells
from cli_support import verbs
from tiny_cascade import tiny_configs

eval_main = verbs("eval")

N = 12
SCENES = evaluation_prompts(N, 1 / 3, 1234)  # the CLI's default prompt set for N prompts
INDEX = {s.caption: i for i, s in enumerate(SCENES)}


def correct_count(weight: float, threshold: str) -> int:
    """How many prompts (the first ones) the fake model gets right with these settings."""
    return round(N * weight / (8 if threshold == "dynamic" else 16))


class SettingsCascade:
    """Draws the true scene for the first `correct_count(w, t)` prompts of the set and
    nothing for the rest, where (w, t) are the base stage's guidance and threshold."""

    calls: list[dict] = []
    device = "cpu"

    def __init__(self):
        self.stages = [SimpleNamespace(config=c) for c in tiny_configs()]  # base: 3.0, dynamic:99.5
        self.names = [s.config.name for s in self.stages]

    @classmethod
    def from_pretrained(cls, directory, device="cpu"):
        return cls()

    def stage(self, name):
        if name not in self.names:
            raise PixcadeError(f"unknown stage {name!r}")
        return next(s for s in self.stages if s.config.name == name)

    def generate(self, prompts, n=1, seed=0, batch_size=None, guidance_weight=None, threshold=None):
        SettingsCascade.calls.append({"guidance_weight": guidance_weight, "threshold": threshold})
        w = (guidance_weight or {}).get("base", 3.0)
        t = (threshold or {}).get("base", "dynamic:99.5")
        k = correct_count(w, t)
        blank = Image.new("RGB", (128, 128), BACKGROUND)
        return [render(SCENES[INDEX[p]], 128) if INDEX[p] < k else blank for p in prompts for _ in range(n)]


def expected(weight: float, threshold: str) -> tuple[float, float]:
    k = correct_count(weight, threshold)
    held = [i for i, s in enumerate(SCENES) if s.held_out]
    return k / N, sum(i < k for i in held) / len(held)


def test_sweep_tabulates_every_setting(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("pixcade.eval.cli.Cascade", SettingsCascade)
    SettingsCascade.calls = []
    out = tmp_path / "sweep"
    assert eval_main(["shapes", "--model", "m", "--prompts", str(N), "--guidance", "1,3,5,8",
                      "--threshold", "dynamic,static", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads((out / "sweep.json").read_text())
    assert result["stage"] == "base" and result["prompts"] == N
    assert result["command"].startswith("pixcade eval shapes --model m --prompts 12 --guidance 1,3,5,8")
    # Only the swept stage gets the settings; the others keep their defaults.
    assert SettingsCascade.calls[0] == {"guidance_weight": {"base": 1.0}, "threshold": {"base": "dynamic"}}
    cells = [(r["guidance_weight"], r["threshold"]) for r in result["rows"]]
    assert cells == [(w, t) for w in (1.0, 3.0, 5.0, 8.0) for t in ("dynamic", "static")]
    for r in result["rows"]:
        overall, held = expected(r["guidance_weight"], r["threshold"])
        assert r["overall"]["accuracy"] == pytest.approx(overall)
        assert r["held_out"]["accuracy"] == pytest.approx(held)
        cell = json.loads((out / r["dir"] / "shapes.json").read_text())
        assert cell["overall"] == r["overall"] and cell["options"]["guidance_weight"] == {"base": r["guidance_weight"]}
        assert (out / r["dir"] / "images" / "0000_0.png").is_file()
    md = (out / "sweep.md").read_text()
    assert "| guidance (base) | dynamic: overall | dynamic: held-out | static: overall | static: held-out |" in md
    overall, held = expected(8.0, "dynamic")
    overall_s, held_s = expected(8.0, "static")
    assert f"| 8 | {overall:.3f} | {held:.3f} | {overall_s:.3f} | {held_s:.3f} |" in md


def test_one_axis_keeps_the_stage_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("pixcade.eval.cli.Cascade", SettingsCascade)
    SettingsCascade.calls = []
    assert eval_main(["shapes", "--model", "m", "--prompts", str(N), "--threshold", "static,dynamic:90",
                      "--out", str(tmp_path / "o")]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    # The base stage's saved guidance weight (3.0) is what the table reports.
    assert [(r["guidance_weight"], r["threshold"]) for r in rows] == [(3.0, "static"), (3.0, "dynamic:90")]
    assert [r["dir"] for r in rows] == ["base.threshold-static", "base.threshold-dynamic-90"]
    assert SettingsCascade.calls[0] == {"guidance_weight": None, "threshold": {"base": "static"}}


@pytest.mark.parametrize("args, message", [
    (["--guidance", "1,x"], "cell base.guidance_weight-x: stage 'base': guidance_weight: cannot read 'x' as float"),
    (["--guidance", "-1"], ">= 0"),
    (["--guidance", "3,3"], "repeats"),
    (["--threshold", "dynamic,sometimes"], "cell base.threshold-sometimes: stage 'base': bad threshold 'sometimes'"),
    (["--guidance", "3", "--sweep-stage", "nope"], "unknown stage 'nope'"),
    (["--sweep-stage", "sr"], "needs --guidance"),
])
def test_bad_sweeps_are_refused_before_any_work(tmp_path, monkeypatch, args, message):
    monkeypatch.setattr("pixcade.eval.cli.Cascade", SettingsCascade)
    SettingsCascade.calls = []
    with pytest.raises(PixcadeError, match=message):
        eval_main(["shapes", "--model", "m", "--prompts", "3", *args, "--out", str(tmp_path / "o")])
    assert SettingsCascade.calls == [] and not (tmp_path / "o").exists()


def test_cells_labels_and_settings():
    """A cell is a tuple of `--set` assignments, one per axis, the first axis slowest; its
    folder name and settings come from them, read as `--set` reads them."""
    axes = [axis("base", "guidance_weight", "1, 2.5", "--guidance"), axis("base", "threshold", "static", "--threshold")]
    grid = cells(axes)
    assert grid == [(("base", "guidance_weight", "1"), ("base", "threshold", "static")),
                    (("base", "guidance_weight", "2.5"), ("base", "threshold", "static"))]
    assert [cell_label(c) for c in grid] == ["base.guidance_weight-1_base.threshold-static",
                                             "base.guidance_weight-2.5_base.threshold-static"]
    configs = tiny_configs()
    settings = cell_settings(configs, grid[1])
    assert settings["base"].guidance_weight == 2.5 and settings["base"].threshold == "static"
    assert settings["sr"] == configs[1].sampling  # the stage not named keeps its saved settings
    assert cells([]) == [()] and cell_label(()) == "defaults"
    with pytest.raises(PixcadeError, match="cell base.guidance_weight-x: stage 'base': guidance_weight"):
        cell_settings(configs, (("base", "guidance_weight", "x"),))
    with pytest.raises(PixcadeError, match="swept twice"):
        cells([Axis("base", "threshold", ("static",)), Axis("base", "threshold", ("dynamic",))])
    with pytest.raises(PixcadeError, match="--guidance: empty value"):
        axis("base", "guidance_weight", "1,,3", "--guidance")


def test_sweep_with_a_real_tiny_cascade(tmp_path, capsys):
    from tiny_cascade import save_tiny_cascade

    model = save_tiny_cascade(tmp_path / "model")
    out = tmp_path / "out"
    assert eval_main(["shapes", "--model", str(model), "--prompts", "2", "--guidance", "1,5",
                      "--threshold", "dynamic,static", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["rows"]) == 4 and result["resolution"] == 32
    pixels = {r["dir"]: np.asarray(Image.open(out / r["dir"] / "images" / "0000_0.png")) for r in result["rows"]}
    # The settings reach the sampler: guidance changes the image.
    assert not np.array_equal(pixels["base.guidance_weight-1_base.threshold-dynamic"],
                              pixels["base.guidance_weight-5_base.threshold-dynamic"])
