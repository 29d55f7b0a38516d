"""A labelled picture of a cascade at work: one row per prompt, the prompt's text, then
each stage's image (the base enlarged to the final size), for the README."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from pixcade.data.shapes import parse_caption
from pixcade.errors import PixcadeError
from pixcade.io import atomic_write_bytes
from pixcade.pipeline.images import png_bytes

if TYPE_CHECKING:
    from pixcade.pipeline.cascade import Cascade

# Two prompts per scene kind; the second of each names a held-out colour-shape pair.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "a red circle",
    "a yellow star",
    "three green triangles",
    "two cyan squares",
    "a blue square and a red star",
    "an orange diamond and a black circle",
    "a blue square to the left of a yellow circle",
    "a purple triangle above a green star",
    "a purple star in the top right corner",
    "a green circle in the bottom left corner",
)
PAD = 6
GRID_COMMAND_KEY = "pixcade-command"  # PNG text chunks: the command that made the grid, the model's digest
GRID_DIGEST_KEY = "pixcade-model-digest"
TEXT_WIDTH = 240
FONT_SIZE = 14


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def wrap(text: str, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels (a word longer than that gets a line of its own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def prompt_label(prompt: str) -> str:
    """The prompt, marked when it is a shapes caption naming a held-out pair."""
    try:
        held_out = parse_caption(prompt).held_out
    except PixcadeError:  # not a shapes caption: shown as it is
        held_out = False
    return f"{prompt} (held-out pair)" if held_out else prompt


def labelled_grid(prompts: Sequence[str], stages: dict[str, Sequence[Image.Image]], cell: int | None = None,
                  final: str | None = None, mark_final: bool = True) -> Image.Image:
    """Rows: prompt text, then each stage's image for it, in ``stages`` order.

    Every image is shown ``cell`` pixels square (default: the ``final`` column's size);
    smaller ones are enlarged with nearest-neighbour, so their pixels stay visible. The
    header names each column and its real resolution, and marks ``final`` (default: the
    last column; columns after it are references, such as real images) unless not
    ``mark_final`` (columns that are alternatives, not stages).
    """
    if not prompts or not stages:
        raise PixcadeError("a grid needs prompts and at least one stage")
    for name, images in stages.items():
        if len(images) != len(prompts):
            raise PixcadeError(f"stage {name!r}: {len(images)} images for {len(prompts)} prompts")
    final = final or next(reversed(stages))
    if final not in stages:
        raise PixcadeError(f"no column {final!r} to mark final (columns: {', '.join(stages)})")
    cell = cell or max(stages[final][0].size)
    font = _font()
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(scratch.textbbox((0, 0), "Ag", font=font)[3]) + 2
    marked = final if mark_final and len(stages) > 1 else None
    headers = [f"{name} ({images[0].size[0]} px{', final' if name == marked else ''})"
               for name, images in stages.items()]
    header_h = max(len(wrap(h, scratch, font, cell)) for h in headers) * line_h + PAD
    row_h = max(cell, max(len(wrap(prompt_label(p), scratch, font, TEXT_WIDTH)) for p in prompts) * line_h)
    width = PAD + TEXT_WIDTH + PAD + len(stages) * (cell + PAD)
    height = PAD + header_h + len(prompts) * (row_h + PAD)
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    x0 = PAD + TEXT_WIDTH + PAD
    draw.text((PAD, PAD), "prompt", fill="black", font=font)
    for k, header in enumerate(headers):
        for j, line in enumerate(wrap(header, draw, font, cell)):
            draw.text((x0 + k * (cell + PAD), PAD + j * line_h), line, fill="black", font=font)
    for i, prompt in enumerate(prompts):
        y = PAD + header_h + i * (row_h + PAD)
        for j, line in enumerate(wrap(prompt_label(prompt), draw, font, TEXT_WIDTH)):
            draw.text((PAD, y + j * line_h), line, fill="black", font=font)
        for k, images in enumerate(stages.values()):
            image = images[i].convert("RGB")
            if image.size != (cell, cell):
                image = image.resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(image, (x0 + k * (cell + PAD), y))
    return grid


def save_grid(cascade: Cascade, prompts: Sequence[str], out: str | Path, *, seed: int, cell: int | None,
              command: str, model_digest: str | None) -> tuple[Image.Image, list[str]]:
    """Generate ``prompts`` with every stage of ``cascade`` and write their `labelled_grid` to
    ``out`` as a PNG recording ``command`` and the model's digest; (the grid, the stage names)."""
    stages = cascade.generate(list(prompts), seed=seed, return_stages=True)
    grid = labelled_grid(prompts, stages, cell)
    write_grid(grid, out, command=command, model_digest=model_digest)
    return grid, list(stages)


def write_grid(grid: Image.Image, out: str | Path, *, command: str, model_digest: str | None) -> None:
    """``grid`` as a PNG at ``out`` (atomically) whose text chunks hold the command that made
    it and the model's digest, so a picture in the README says where it came from."""
    info = PngInfo()
    info.add_text(GRID_COMMAND_KEY, command)
    info.add_text(GRID_DIGEST_KEY, model_digest or "")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, png_bytes(grid, pnginfo=info))
