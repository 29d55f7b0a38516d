"""Converting between image tensors in [-1, 1] and PIL images, grids, atomic PNG writes."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pixcade.data import transforms
from pixcade.data.samples import DECODE_ERRORS
from pixcade.errors import PixcadeError
from pixcade.io import atomic_write_bytes


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``[B, 3, H, W]`` in [-1, 1] -> RGB uint8 images."""
    return [transforms.to_pil(x) for x in images]


def read_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """The file's image, decoded, in its own mode; any unreadable file (Pillow's
    decompression-bomb limit included) is a one-line error naming it as ``what``."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except DECODE_ERRORS as err:
        raise PixcadeError(f"cannot read {what} {path}: {err}") from None


def open_image(path: str | os.PathLike) -> Image.Image:
    """An RGB image (see `read_image`)."""
    return read_image(path).convert("RGB")


def make_grid(rows: Sequence[Sequence[Image.Image]], pad: int = 2) -> Image.Image:
    """Rows of equally sized images on a white background (row = prompt, column = sample)."""
    if not rows or not rows[0]:
        raise PixcadeError("no images to put in a grid")
    w, h = rows[0][0].size
    cols = max(len(r) for r in rows)
    grid = Image.new("RGB", (cols * (w + pad) + pad, len(rows) * (h + pad) + pad), "white")
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            grid.paste(im, (pad + c * (w + pad), pad + r * (h + pad)))
    return grid


def png_bytes(image: Image.Image, pnginfo: PngInfo | None = None) -> bytes:
    """The image as a PNG file's bytes (with ``pnginfo``'s text chunks)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=pnginfo)
    return buf.getvalue()


def save_png_atomic(image: Image.Image, path: Path) -> None:
    """Write to a temporary name then rename: a file under the final name is always whole."""
    atomic_write_bytes(path, png_bytes(image))
