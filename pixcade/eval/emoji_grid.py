"""The emoji model's README picture (`pixcade eval emoji grid`): for held-out prompts, the
base stage's 64 px image, the final 256 px image, and a real training image of the same
concept in another style: the drawing the model may have learnt the concept from, so a
reader sees whether it drew the concept in the asked style or pasted the other one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from pixcade.data.emoji.manifest import manifest_rows
from pixcade.data.emoji.spec import STYLES
from pixcade.errors import PixcadeError
from pixcade.eval.stage_grid import labelled_grid, write_grid
from pixcade.pipeline.cascade import Cascade
from pixcade.pipeline.images import open_image

REFERENCE = "real, another style"  # the reference column's header
# Which other style's drawing is shown: the first in this order that draws the concept. The
# picture goes into the README, and the spec forbids committing share-alike art and asks that
# every image keep its attribution, so permissive licences come first (Apache-2.0, MIT), then
# CC-BY, and the share-alike style last; the card names each reference's style and licence.
LICENCE_RANK = {"Apache-2.0": 0, "MIT": 0, "CC-BY-4.0": 1, "CC-BY-SA-4.0": 2}
STYLE_ORDER = [s.name for s in sorted(STYLES, key=lambda s: LICENCE_RANK.get(s.licence, 3))]


def reference_rows(held_rows: Sequence[dict[str, Any]], train_rows: Sequence[dict[str, Any]],
                   prompts: Sequence[str]) -> list[dict[str, Any] | None]:
    """For each held-out prompt, the training row of its concept family in another style
    (the first such style in the spec's order), or None when no other style draws it."""
    by_caption = {r["caption"]: r for r in held_rows}
    missing = [p for p in prompts if p not in by_caption]
    if missing:
        raise PixcadeError(f"{len(missing)} prompt(s) are not held-out emoji prompts, e.g. {missing[0]!r}")
    first: dict[tuple[str, str], dict[str, Any]] = {}
    for r in train_rows:
        first.setdefault((r["family"], r["style"]), r)
    out = []
    for p in prompts:
        row = by_caption[p]
        others = [first[(row["family"], s)] for s in STYLE_ORDER if s != row["style"] and (row["family"], s) in first]
        out.append(others[0] if others else None)
    return out


def emoji_grid(cascade: Cascade, prompts: Sequence[str], data: str | Path, *, seed: int) -> Image.Image:
    """Generate ``prompts`` (held-out captions) through every stage and lay them out beside
    their references (blank where no other style draws the concept)."""
    base = Path(data) / "base-64"
    refs = reference_rows(manifest_rows(base / "heldout.jsonl"), manifest_rows(base / "train.jsonl"), prompts)
    stages = cascade.generate(list(prompts), seed=seed, return_stages=True)
    side = next(iter(stages.values()))[0].size[0]
    columns = {**stages, REFERENCE: [open_image(base / r["image"]).convert("RGB") if r else
                                     Image.new("RGB", (side, side), "white") for r in refs]}
    labels = [f"{p} [reference: {r['style'] if r else 'none'}]" for p, r in zip(prompts, refs)]
    return labelled_grid(labels, columns, final=next(reversed(stages)))


def save_emoji_grid(cascade: Cascade, prompts: Sequence[str], data: str | Path, out: str | Path, *, seed: int,
                    command: str, model_digest: str | None) -> Image.Image:
    """`emoji_grid` written to ``out`` as a PNG recording ``command`` and the model's digest."""
    grid = emoji_grid(cascade, prompts, data, seed=seed)
    write_grid(grid, out, command=command, model_digest=model_digest)
    return grid
