"""`pixcade eval grid`: prompts and each stage's image, labelled, in one PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pixcade.data.shapes import parse_caption
from pixcade.errors import PixcadeError
from pixcade.eval.stage_grid import GRID_COMMAND_KEY
from cli_support import verbs
from pixcade.eval.stage_grid import DEFAULT_PROMPTS, PAD, TEXT_WIDTH, _font, labelled_grid, prompt_label, wrap

eval_main = verbs("eval")


def test_default_prompts_cover_every_scene_kind_seen_and_held_out():
    scenes = [parse_caption(p) for p in DEFAULT_PROMPTS]
    assert [s.caption for s in scenes] == list(DEFAULT_PROMPTS)  # our own captions, verbatim
    kinds = {(s.kind, s.held_out) for s in scenes}
    assert kinds == {(k, h) for k in ("single", "counting", "two_objects", "relation", "position") for h in (False, True)}
    assert prompt_label("a yellow star") == "a yellow star (held-out pair)"
    assert prompt_label("a red circle") == "a red circle"
    assert prompt_label("a photo of a cat") == "a photo of a cat"


def test_wrap_fits_the_width_and_keeps_every_word():
    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), _font()
    text = "a blue square to the left of a yellow circle on a grey background"
    lines = wrap(text, draw, font, 90)
    assert " ".join(lines) == text and len(lines) > 1
    assert all(draw.textlength(line, font=font) <= 90 for line in lines if " " in line)


def _solid(colour, size):
    return Image.new("RGB", (size, size), colour)


def test_images_land_in_their_cells_and_small_ones_are_enlarged():
    prompts = ["a red circle", "two cyan squares"]
    stages = {"base": [_solid((255, 0, 0), 8), _solid((0, 255, 0), 8)],
              "sr": [_solid((0, 0, 255), 32), _solid((255, 255, 0), 32)]}
    grid = np.asarray(labelled_grid(prompts, stages))
    x_base, x_sr = PAD + TEXT_WIDTH + PAD, PAD + TEXT_WIDTH + PAD + 32 + PAD
    # Bottom-right corner of each cell: below the header, each image fills its 32 x 32 cell.
    bottom = grid.shape[0] - PAD - 1
    assert tuple(grid[bottom, x_base + 31]) == (0, 255, 0) and tuple(grid[bottom, x_sr + 31]) == (255, 255, 0)
    assert tuple(grid[bottom, x_sr + 32]) == (255, 255, 255)  # the gap
    top_row = bottom - 31 - PAD - 1
    assert tuple(grid[top_row, x_base]) == (255, 0, 0) and tuple(grid[top_row, x_sr]) == (0, 0, 255)
    # Text was drawn in the label column (something not white there).
    assert (grid[:, PAD:PAD + TEXT_WIDTH] < 128).any()
    with pytest.raises(PixcadeError, match="1 images for 2 prompts"):
        labelled_grid(prompts, {"base": stages["base"][:1]})


def test_grid_cli_with_a_real_tiny_cascade(tmp_path, capsys):
    from tiny_cascade import save_tiny_cascade

    model = save_tiny_cascade(tmp_path / "model")
    out = tmp_path / "docs/grid.png"
    assert eval_main(["grid", "--model", str(model), "--prompt", "a red circle", "--prompt", "a yellow star",
                      "--cell", "64", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["stages"] == ["base", "sr"] and printed["prompts"] == ["a red circle", "a yellow star"]
    with Image.open(out) as im:
        assert list(im.size) == printed["size"]
        assert im.text[GRID_COMMAND_KEY] == printed["command"]
        assert printed["command"].startswith(f"pixcade eval grid --model {model} --prompt 'a red circle'")
        assert im.size[0] == PAD + TEXT_WIDTH + PAD + 2 * (64 + PAD)
