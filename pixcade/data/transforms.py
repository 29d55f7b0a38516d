"""From samples to a stage's training tensors.

The base stage sees the image resized (shorter side, antialiased bicubic) and
centre-cropped to its resolution. A super-resolution stage sees the pair made from ONE
image: the high-res image, and the same image downsampled (antialiased) to the low-res
resolution, which is what the previous stage of the cascade would hand it. With
`train_crop` (the paper trains 256->1024 on 64->256 crops) it gets a random crop of the
high-res image and the matching crop of the low-res one: crop origins are multiples of
the scale factor, so the low-res crop covers exactly the same area.

Random crops are drawn from a generator seeded by (seed, epoch, sample key), so they
are the same whichever worker, rank or order reads the sample, and a resumed run sees
the crops the interrupted one would have.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from pixcade.data.samples import Skipped, stable_seed
from pixcade.errors import PixcadeError

RESAMPLE = Image.Resampling.BICUBIC  # PIL widens the kernel when shrinking: antialiased


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """The largest centred square of `image`, resized to size x size in one resampling."""
    w, h = image.size
    if (w, h) == (size, size):
        return image
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return image.resize((size, size), RESAMPLE, box=(left, top, left + side, top + side))


def square_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """An image as a stage sees it at ``size``: the centred square, one antialiased resize,
    [3, size, size] in [-1, 1]. Training images and start images both go through here, so a
    start image is framed exactly as the stage's training data was."""
    return to_tensor(resize_center_crop(image.convert("RGB"), size))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float [3, H, W] in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """Float [3, H, W] in [-1, 1] -> RGB PIL image (rounded to uint8)."""
    array = ((tensor.detach().cpu().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy(), "RGB")


class ImageTransform:
    """Base stage: `{"image": [3, R, R] in [-1, 1], "caption", "key"}`."""

    def __init__(self, resolution: int):
        if resolution < 1:
            raise PixcadeError(f"resolution must be positive, got {resolution}")
        self.resolution = resolution

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = square_tensor(sample["image"], self.resolution)
        return {"image": image, "caption": sample["caption"], "key": sample["key"]}


class SuperResTransform:
    """SR stage: `{"image": [3, C, C], "lowres": [3, C/s, C/s], "caption", "key"}`.

    C is `train_crop` when set, else `resolution`; s = resolution / lowres_resolution.
    """

    def __init__(
        self,
        resolution: int,
        lowres_resolution: int,
        train_crop: int | None = None,
        seed: int = 0,
    ):
        if not 0 < lowres_resolution < resolution:
            raise PixcadeError(
                f"need 0 < lowres_resolution < resolution, got {lowres_resolution} and {resolution}"
            )
        if train_crop is not None:
            if resolution % lowres_resolution:
                raise PixcadeError(
                    f"random crops need resolution ({resolution}) to be a multiple of "
                    f"lowres_resolution ({lowres_resolution})"
                )
            scale = resolution // lowres_resolution
            if not 0 < train_crop <= resolution or train_crop % scale:
                raise PixcadeError(
                    f"train_crop must be a multiple of {scale} in (0, {resolution}], got {train_crop}"
                )
        self.resolution, self.lowres_resolution = resolution, lowres_resolution
        self.train_crop, self.seed, self.epoch = train_crop, seed, 0

    @property
    def scale(self) -> int:
        return self.resolution // self.lowres_resolution

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def crop_origin(self, generator: torch.Generator) -> tuple[int, int]:
        """(top, left) of a random crop in high-res pixels, both multiples of the scale."""
        assert self.train_crop is not None
        positions = (self.resolution - self.train_crop) // self.scale + 1
        top, left = torch.randint(positions, (2,), generator=generator).tolist()
        return top * self.scale, left * self.scale

    def __call__(
        self, sample: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        high = resize_center_crop(sample["image"], self.resolution)
        low = high.resize((self.lowres_resolution, self.lowres_resolution), RESAMPLE)
        if self.train_crop is not None:
            if generator is None:
                generator = torch.Generator().manual_seed(
                    stable_seed(self.seed, self.epoch, sample["key"])
                )
            top, left = self.crop_origin(generator)
            c, s = self.train_crop, self.scale
            high = high.crop((left, top, left + c, top + c))
            low = low.crop((left // s, top // s, (left + c) // s, (top + c) // s))
        return {
            "image": to_tensor(high),
            "lowres": to_tensor(low),
            "caption": sample["caption"],
            "key": sample["key"],
        }


def stage_transform(config: Any, seed: int = 0) -> ImageTransform | SuperResTransform:
    """The transform for a `pixcade.stage.StageConfig` (read by attribute)."""
    if config.lowres_resolution is None:
        if getattr(config, "train_crop", None) is not None:
            raise PixcadeError(f"stage {config.name!r}: train_crop is for super-resolution stages")
        return ImageTransform(config.resolution)
    return SuperResTransform(
        config.resolution, config.lowres_resolution, getattr(config, "train_crop", None), seed
    )


def collate(items: list[Any]) -> dict[str, Any]:
    """Stacks tensors, keeps captions and keys as lists, sets skipped markers aside.

    The batch is `{"image", "lowres" (SR), "caption": list, "key": list, "skipped":
    list[Skipped]}`; if every item was skipped it has no "image" (and `SkipStats.track`
    drops it after counting).
    """
    samples = [x for x in items if not isinstance(x, Skipped)]
    batch: dict[str, Any] = {
        "caption": [s["caption"] for s in samples],
        "key": [s["key"] for s in samples],
        "skipped": [x for x in items if isinstance(x, Skipped)],
    }
    if samples:
        if not isinstance(samples[0].get("image"), torch.Tensor):
            raise PixcadeError("collate needs transformed samples (open the dataset with a transform)")
        batch["image"] = torch.stack([s["image"] for s in samples])
        if "lowres" in samples[0]:
            batch["lowres"] = torch.stack([s["lowres"] for s in samples])
    return batch
