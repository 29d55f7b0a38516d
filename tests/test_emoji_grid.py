"""`pixcade eval emoji grid`: held-out prompts, each stage's image, and a real drawing of the
same concept in another style."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from emoji_fixtures import EMOJI, HELD_OUT, make_packages
from pixcade.cli import main as pixcade_main
from pixcade.data.emoji.build import build_emoji_dataset
from pixcade.errors import PixcadeError
from pixcade.eval.emoji_grid import reference_rows
from pixcade.eval.stage_grid import GRID_COMMAND_KEY, PAD, TEXT_WIDTH
from tiny_cascade import SR_RES, save_tiny_cascade


def row(style, family, caption="", image=""):
    return {"style": style, "family": family, "caption": caption, "image": image}


def test_the_reference_is_another_style_that_draws_the_family_the_most_permissively_licensed():
    held = [row("google", "rocket", "rocket, Google Noto style"), row("twemoji", "rose", "rose, Twemoji style")]
    train = [row("openmoji", "rocket", image="o.png"), row("twemoji", "rocket", image="t.png"),
             row("google", "rocket", image="g.png"), row("twemoji", "rose", image="r.png"),
             row("openmoji", "rose", image="or.png"), row("fluent-flat", "rose", image="fr.png")]
    refs = reference_rows(held + [row("google", "rose", "rose, Google Noto style")], train,
                          ["rocket, Google Noto style", "rose, Twemoji style", "rose, Google Noto style"])
    assert refs[0]["image"] == "t.png"  # CC-BY before CC-BY-SA (google, the asked style, is not a reference)
    assert refs[1]["image"] == "fr.png"  # MIT before CC-BY-SA
    assert refs[2]["image"] == "fr.png"  # MIT before CC-BY
    assert reference_rows(held, train[:3], ["rose, Twemoji style"]) == [None]  # only the asked style draws it
    with pytest.raises(PixcadeError, match="not held-out emoji prompts"):
        reference_rows(held, train, ["a cat"])


def test_grid_cli_draws_each_stage_and_the_reference(tmp_path, capsys):
    data = tmp_path / "data"
    build_emoji_dataset(data, make_packages(tmp_path / "npm"), fetch=False, held_out=HELD_OUT, progress=False)
    model = save_tiny_cascade(tmp_path / "model")
    out = tmp_path / "grid.png"
    assert pixcade_main(["eval", "emoji", "grid", "--model", str(model), "--data", str(data), "--split", "test_cs",
                         "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["prompts"] == ["rocket, Twemoji style"]
    image = Image.open(out)
    assert image.text[GRID_COMMAND_KEY].startswith("pixcade eval emoji grid --model")
    grid = np.asarray(image.convert("RGB"))
    # Three columns of SR_RES cells: base, sr (final), then the reference, whose centre is the
    # fixture's rocket colour (every style draws it as that square).
    x_ref = PAD + TEXT_WIDTH + PAD + 2 * (SR_RES + PAD)
    assert grid.shape[1] == x_ref + SR_RES + PAD
    centre = grid[-PAD - SR_RES // 2, x_ref + SR_RES // 2]
    assert np.abs(centre.astype(int) - EMOJI["1f680"][3]).max() <= 2
    assert pixcade_main(["eval", "emoji", "grid", "--model", str(model), "--data", str(data),
                         "--prompt", "a cat, Twemoji style", "--out", str(out)]) == 2
    assert "not held-out emoji prompts" in capsys.readouterr().err
