"""Does a built emoji dataset keep its held-out rows out of training? Checked from the
outside, for the model card (`pixcade data emoji --audit DIR`), not by trusting the builder.

Three checks, per set (`base-64`, `sr-256`):
- no training row names a held-out (style, key) of the list;
- no training image has the pixels of a held-out image of the same style (this catches a
  held-out key whose drawing was merged into a training image under another key);
- no training caption is a held-out prompt (the prompt is what the model is judged on).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from pixcade.data.emoji.manifest import manifest_rows
from pixcade.data.emoji.spec import HeldOut
from pixcade.data.samples import DECODE_ERRORS
from pixcade.errors import PixcadeError

SETS = ("base-64", "sr-256")


def pixel_digest(path: Path) -> str:
    """sha256 of an image's decoded RGBA pixels and size: equal for equal drawings, whatever
    the PNG encoder did."""
    try:
        with Image.open(path) as im:
            rgba = np.asarray(im.convert("RGBA"))
    except DECODE_ERRORS as err:
        raise PixcadeError(f"cannot read {path}: {err}") from None
    return hashlib.sha256(repr(rgba.shape).encode() + rgba.tobytes()).hexdigest()


def audit_set(folder: Path, held: Sequence[HeldOut]) -> dict[str, Any]:
    """The three checks on one set's train.jsonl against its heldout.jsonl and the list."""
    train = manifest_rows(folder / "train.jsonl")
    held_rows = manifest_rows(folder / "heldout.jsonl")
    listed = {(h.style, h.key) for h in held}
    named = sorted({f"{r['style']} {r['key']}" for r in train if (r["style"], r["key"]) in listed})
    held_pixels = {(r["style"], pixel_digest(folder / r["image"])) for r in held_rows}
    train_images = {(r["style"], r["image"]) for r in train}
    same = sorted(f"{style} {image}" for style, image in train_images
                  if (style, pixel_digest(folder / image)) in held_pixels)
    prompts = {h.prompt for h in held if h.prompt} | {r["caption"] for r in held_rows}
    captions = sorted({r["caption"] for r in train if r["caption"] in prompts})
    return {"train_rows": len(train), "train_images": len(train_images), "held_out_images": len(held_rows),
            "rows_naming_a_held_out_key": named, "images_with_held_out_pixels": same,
            "captions_that_are_held_out_prompts": captions,
            "clean": not (named or same or captions)}


def audit(data: str | Path, held: Sequence[HeldOut]) -> dict[str, Any]:
    """`audit_set` for each set the dataset has; ``clean`` when every check passes."""
    data = Path(data)
    found = [s for s in SETS if (data / s / "train.jsonl").is_file()]
    if not found:
        raise PixcadeError(f"{data}: no {' or '.join(s + '/train.jsonl' for s in SETS)} (build it with "
                           "`pixcade data emoji`)")
    sets = {s: audit_set(data / s, held) for s in found}
    return {"held_out_rows": len(held), "sets": sets, "clean": all(r["clean"] for r in sets.values())}
