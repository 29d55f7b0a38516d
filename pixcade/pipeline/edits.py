"""Editing requests for a cascade: an image to start from, a mask to inpaint, and how.

These settings belong to one request, not to a stage: the image and its mask are the
caller's, the strength applies to the base stage only (later stages sample as usual from
it), and the resampling and soft-edge settings mean nothing without the request's mask. So
they live here rather than among the per-stage sampling defaults a model is saved with.
`EditRequest` is checked when made; `EditBatch.stage_edit` turns it into one stage's
tensors (`pixcade.diffusion.editing.ImageEdit`) with every random draw seeded per image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pixcade.diffusion.editing import DEFAULT_JUMP, ImageEdit, check_resampling, check_strength, feather
from pixcade.errors import PixcadeError
from pixcade.data.transforms import square_tensor
from pixcade.pipeline.images import open_image, read_image
from pixcade.pipeline.jobs import Job, per_image_noise, per_image_step_noise
from pixcade.stage import StageConfig

ImageSource = Image.Image | str | os.PathLike


@dataclass(frozen=True)
class EditRequest:
    """How to edit: SDEdit ``strength`` in [0, 1] (1: from pure noise, the default when
    inpainting; 0: the image itself), RePaint ``resample`` round trips of ``jump`` in t
    per step (0: off), and a ``soft_edge`` of that many final-resolution pixels inside the
    mask over which the result blends into the input (0: a hard edge)."""

    strength: float = 1.0
    resample: int = 0
    jump: float = DEFAULT_JUMP
    soft_edge: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "strength", check_strength(self.strength))
        check_resampling(self.resample, self.jump)
        if isinstance(self.soft_edge, bool) or not isinstance(self.soft_edge, int) or self.soft_edge < 0:
            raise PixcadeError(f"soft edge must be an integer number of pixels >= 0, got {self.soft_edge!r}")


def as_image(source: ImageSource) -> Image.Image:
    return source.convert("RGB") if isinstance(source, Image.Image) else open_image(source)


def as_mask(source: ImageSource, image: Image.Image) -> Image.Image:
    """The mask as a greyscale image (white = redraw) of exactly the image's size."""
    mask = source if isinstance(source, Image.Image) else read_image(source, "mask")
    if mask.size != image.size:
        raise PixcadeError(
            f"the mask is {mask.size[0]}x{mask.size[1]} but the image is {image.size[0]}x{image.size[1]}: "
            "they must be the same size"
        )
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        # A painted layer: opaque paint marks the region to redraw.
        return mask.convert("RGBA").getchannel("A")
    return mask.convert("L")


def mask_tensor(mask: Image.Image, resolution: int) -> torch.Tensor:
    """``[1, R, R]`` in [0, 1], centre-cropped like `square_tensor`. Shrinking keeps a low-res
    pixel redrawn if any pixel it covers is (max pooling), so no stage keeps a pixel that
    the full-resolution mask redraws; growing repeats pixels (nearest)."""
    w, h = mask.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    m = torch.from_numpy(np.asarray(mask.crop((left, top, left + side, top + side)), dtype=np.float32) / 255.0)
    m = m[None, None]
    if side > resolution:
        m = F.adaptive_max_pool2d(m, resolution)
    elif side < resolution:
        m = F.interpolate(m, size=(resolution, resolution), mode="nearest-exact")
    return m[0]


class EditBatch:
    """One batch's images (and masks) to edit, one per job, with the request's settings."""

    def __init__(self, request: EditRequest, images: Sequence[Image.Image], masks: Sequence[Image.Image] | None):
        if masks is not None and len(masks) != len(images):
            raise PixcadeError(f"{len(masks)} masks for {len(images)} images")
        self.request, self.images, self.masks = request, list(images), masks

    def stage_edit(
        self, config: StageConfig, first: bool, seed: int, jobs: Sequence[Job], device: torch.device
    ) -> ImageEdit | None:
        """Stage ``config``'s edit: the SDEdit start on the first stage run, the kept region
        at every stage when there is a mask (None: the stage samples as usual)."""
        if not first and self.masks is None:
            return None
        r = config.resolution
        image = torch.stack([square_tensor(im, r) for im in self.images]).to(device)
        if self.masks is None:
            return ImageEdit(image, strength=self.request.strength)
        shape = (config.unet.out_channels, r, r)
        return ImageEdit(
            image,
            strength=self.request.strength if first else 1.0,
            mask=torch.stack([mask_tensor(m, r) for m in self.masks]).to(device),
            known_noise=per_image_noise(seed, (config.name, "known"), jobs, shape).to(device),
            resample=self.request.resample,
            jump=self.request.jump,
            resample_noise=per_image_step_noise(seed, (config.name, "resample"), jobs, shape, device),
        )

    def finish(self, x: torch.Tensor, config: StageConfig) -> torch.Tensor:
        """The final stage's output blended into the input over the soft edge (as it is
        without one: inpainting already kept the unmasked pixels)."""
        if self.masks is None or self.request.soft_edge == 0:
            return x
        r = config.resolution
        image = torch.stack([square_tensor(im, r) for im in self.images]).to(x.device)
        mask = torch.stack([mask_tensor(m, r) for m in self.masks]).to(x.device)
        return torch.lerp(image, x, feather(mask, self.request.soft_edge).to(x.dtype))
