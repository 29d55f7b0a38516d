"""`pixcade eval shapes`: a cascade's images scored by the shapes scorer, per kind and seen/held-out."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from pixcade.data.render import render
from pixcade.data.shapes import BACKGROUND, evaluation_prompts
from pixcade.errors import PixcadeError
from cli_support import verbs

eval_main = verbs("eval")


# The CLI's default prompt set (seed 1234, a third held out) for 10 prompts.
SCENES = {s.caption: s for s in evaluation_prompts(10, 1 / 3, 1234)}


class OracleCascade:
    """Draws the true scene of each caption (or, as "blank", nothing at all)."""

    stages: list = []  # no networks, so no precision to record
    device = "cpu"

    def __init__(self, blank: bool) -> None:
        self.blank = blank

    @classmethod
    def from_pretrained(cls, directory, device="cpu"):
        return cls(blank=str(directory) == "blank")

    def generate(self, prompts, n=1, seed=0, batch_size=None, progress=True, **options):
        if self.blank:
            return [Image.new("RGB", (128, 128), BACKGROUND) for _ in prompts for _ in range(n)]
        return [render(SCENES[p], 128) for p in prompts for _ in range(n)]


@pytest.mark.parametrize("model, accuracy", [("oracle", 1.0), ("blank", 0.0)])
def test_eval_shapes_scores_per_kind_and_split(tmp_path, monkeypatch, capsys, model, accuracy):
    monkeypatch.setattr("pixcade.eval.cli.Cascade", OracleCascade)
    out = tmp_path / "out"
    assert eval_main(["shapes", "--model", model, "--prompts", "10", "--images-per-prompt", "2",
                      "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "shapes.json").read_text())
    assert printed["overall"] == {"n": 20, "passed": int(20 * accuracy), "accuracy": accuracy}
    assert set(printed["by_kind"]) == {"single", "counting", "two_objects", "relation", "position"}
    assert printed["seen"]["n"] + printed["held_out"]["n"] == 20 and printed["held_out"]["n"] > 0
    assert printed["resolution"] == 128 and "note" not in printed
    first = printed["results"][0]
    assert Image.open(out / first["image"]).size == (128, 128)
    md = (out / "shapes.md").read_text()
    assert "held-out pairs" in md and "**overall**" in md


def test_eval_shapes_with_a_real_tiny_cascade(tmp_path, capsys):
    from tiny_cascade import save_tiny_cascade

    model = save_tiny_cascade(tmp_path / "model")
    assert eval_main(["shapes", "--model", str(model), "--prompts", "2", "--out", str(tmp_path / "out")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["overall"]["n"] == 2 and report["resolution"] == 32
    assert "128px" in report["note"]  # tiny cascade: too small to score reliably, and it says so


def test_eval_shapes_runs_in_the_dtype_asked_and_records_it(tmp_path, capsys, monkeypatch):
    """--dtype reaches every stage's sampling (the images are those of Cascade.generate in
    that dtype); the report records the precision each stage ran in, auto resolved."""
    import numpy as np

    from pixcade.diffusion import precision
    from pixcade.pipeline.cascade import Cascade
    from tiny_cascade import save_tiny_cascade

    monkeypatch.setattr(precision, "computes_bf16", lambda device: False)
    model = save_tiny_cascade(tmp_path / "model")
    reports = {}
    for spec in ("bf16", "base=bf16,sr=fp32", None):
        out = tmp_path / str(spec).replace(",", "_")
        assert eval_main(["shapes", "--model", str(model), "--prompts", "2", "--out", str(out),
                          *(["--dtype", spec] if spec else [])]) == 0
        reports[spec] = json.loads(capsys.readouterr().out)
        reports[spec]["image"] = np.asarray(Image.open(out / reports[spec]["results"][0]["image"]))
    assert reports["bf16"]["precision"] == {"base": "bf16", "sr": "bf16"}
    assert reports["bf16"]["options"] == {"dtype": {"base": "bf16", "sr": "bf16"}}
    assert reports["base=bf16,sr=fp32"]["precision"] == {"base": "bf16", "sr": "fp32"}
    assert reports[None]["precision"] == {"base": "fp32", "sr": "fp32"} and "options" not in reports[None]
    caption = evaluation_prompts(2, 1 / 3, 1234)[0].caption
    api = Cascade.from_pretrained(model).generate([caption], dtype="bf16", batch_size=16, progress=False)
    assert np.array_equal(reports["bf16"]["image"], np.asarray(api[0]))
    assert not np.array_equal(reports["bf16"]["image"], reports[None]["image"])
    with pytest.raises(PixcadeError, match="unknown dtype 'half'"):
        eval_main(["shapes", "--model", str(model), "--prompts", "2", "--out", str(tmp_path / "x"), "--dtype", "half"])
