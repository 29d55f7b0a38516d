"""One emoji image -> an RGB square on white, at the size asked.

Vectors are rendered by resvg (`resvg-py`) at the target size; rasters are downsampled
with alpha premultiplied (so transparent pixels' colours never bleed into the edge), then
composited on white. Nothing is re-centred: each style keeps its own framing. resvg
renders these files as their vendors show them, filters and all (cairosvg, compared, drops
the Fluent color style's blur filters); with system fonts skipped its output depends only
on the file and resvg's version.
"""

from __future__ import annotations

import io

import resvg_py
from PIL import Image

from pixcade.data.samples import on_white

# Area averaging: what resvg's coverage antialiasing does for the vector styles at 64 px,
# and with alpha premultiplied it equals compositing first (no ringing to clamp).
DOWNSAMPLE = Image.Resampling.BOX


class Refused(Exception):
    """The file could not be turned into an image (the builder counts and skips it)."""


def pad_square(image: Image.Image) -> Image.Image:
    """An RGBA image centred on a transparent square of its longer side (not cropped: the
    style's framing is kept whole)."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    return square


def render_svg(data: bytes, size: int) -> Image.Image:
    try:
        png = resvg_py.svg_to_bytes(svg_string=data.decode("utf-8"), width=size, height=size, skip_system_fonts=True)
        image = Image.open(io.BytesIO(bytes(png)))
        image.load()
    except (ValueError, UnicodeDecodeError, OSError) as err:
        raise Refused(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    if max(image.size) != size:
        raise Refused(f"rendered at {image.size[0]}x{image.size[1]}, not {size} px")
    return on_white(pad_square(image.convert("RGBA")))  # a 32x33 viewBox renders 63x64


def render_raster(data: bytes, size: int) -> Image.Image:
    """A PNG/WebP: padded to a square (`pad_square`: a few Fluent 3D images are 256x264),
    downsampled premultiplied when larger than `size`."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        image = image.convert("RGBA")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise Refused(str(err) or type(err).__name__) from None
    image = pad_square(image)
    if image.size[0] < size:
        raise Refused(f"{image.size[0]} px source is smaller than {size} px")
    if image.size[0] > size:
        image = image.convert("RGBa").resize((size, size), DOWNSAMPLE).convert("RGBA")
    return on_white(image)


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
