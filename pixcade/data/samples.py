"""What every data source yields: a decoded sample, or a marker for one that could not be read.

A corrupt image must never stop a long training run, and with data-loader workers the
process that hits it is not the one that trains. So the reader returns a `Skipped`
marker instead of raising; markers travel through the transform and the collate
function like samples do, and `SkipStats.track` counts them in the training process,
whichever process read the file.
"""

from __future__ import annotations

import io
import logging
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from PIL import Image, ImageOps

logger = logging.getLogger("pixcade.data")

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")

# What PIL raises on a truncated, corrupt, non-image or absurdly large file.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Skipped:
    """Stands in for a sample whose image could not be read."""

    key: str
    reason: str


def stable_seed(*parts: Any) -> int:
    """A seed from values, the same in every process (unlike `hash()` of a str)."""
    return zlib.crc32(repr(parts).encode("utf-8"))


def decode_image(data: bytes | str, key: str) -> Image.Image | Skipped:
    """An RGB image from a file path or encoded bytes, or a `Skipped` marker saying why not."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            im.load()  # decode now: PIL is lazy, and a truncated file only fails here
            # Phone photos store rotation as an EXIF tag; captions describe the upright view.
            im = ImageOps.exif_transpose(im)
            image = on_white(im)
    except FileNotFoundError:
        return skip(key, "file not found")
    except DECODE_ERRORS as err:
        return skip(key, f"{type(err).__name__}: {err}")
    return image


def on_white(im: Image.Image) -> Image.Image:
    """An RGB copy of ``im``, any transparency composited on white."""
    if im.mode == "RGB":
        return im.copy()
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    if not has_alpha:
        return im.convert("RGB")
    # Transparent pixels hold arbitrary colours (often black); show them on white instead.
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def skip(key: str, reason: str) -> Skipped:
    # Logged where it happens (a worker's log goes to stderr) so the file can be found
    # even if the run dies before the end-of-epoch summary.
    logger.warning("skipping unreadable image %s (%s)", key, reason)
    return Skipped(key, reason)


@dataclass
class SkipStats:
    """Counts the samples skipped for unreadable images, by key.

    `track()` wraps an iterable of samples (from a dataset) or of batches (from a
    `DataLoader` using `pixcade.data.transforms.collate`): it records the markers, yields
    only real samples / non-empty batches, and logs a summary when the iterable ends.
    """

    skipped: dict[str, str] = field(default_factory=dict)  # key -> reason

    @property
    def count(self) -> int:
        return len(self.skipped)

    def record(self, item: Skipped) -> None:
        self.skipped[item.key] = item.reason

    def update(self, batch: dict[str, Any]) -> None:
        """Records the markers a collated batch carries under "skipped"."""
        for item in batch.get("skipped", ()):
            self.record(item)

    def track(self, items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            if isinstance(item, Skipped):
                self.record(item)
                continue
            if isinstance(item, dict) and "skipped" in item:
                self.update(item)
                if not item.get("key"):
                    continue  # every sample of this batch was skipped
            yield item
        self.report()

    def summary(self) -> str:
        if not self.skipped:
            return "no images skipped"
        shown = ", ".join(sorted(self.skipped)[:10])
        more = f" and {self.count - 10} more" if self.count > 10 else ""
        return f"skipped {self.count} unreadable image(s): {shown}{more}"

    def report(self) -> str:
        """Logs the summary (a warning when anything was skipped) and returns it."""
        text = self.summary()
        if self.skipped:
            logger.warning(text)
        else:
            logger.info(text)
        return text
