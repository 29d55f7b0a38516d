"""A generation request as the pipeline runs it: the prompts and what each one asks for.

`Cascade.generate`, `pixcade generate`'s output folder and the server each build one and
hand batches of its jobs to `Cascade.sample_batch`, which slices it with `select`. So a new
per-prompt option is a field here (and its use in `sample_batch`), not a change to three
batching loops. (The server's HTTP request, `pixcade.serve.requests.GenerationRequest`, is
checked JSON that becomes one of these.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Sequence

from PIL import Image

from pixcade.errors import PixcadeError
from pixcade.pipeline.edits import EditBatch, EditRequest, ImageSource, as_image, as_mask
from pixcade.pipeline.jobs import Job


def per_prompt(value: Any, prompts: Sequence[str], what: str) -> list[Any] | None:
    """One value for every prompt, or a list of one per prompt (another length: an error)."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike, Image.Image)):
        return [value] * len(prompts)
    values = list(value)
    if len(values) != len(prompts):
        raise PixcadeError(f"{len(values)} {what} for {len(prompts)} prompts")
    return values


def prompt_list(prompts: str | Sequence[str]) -> list[str]:
    """One prompt or several as a list, checked (a caller checks the limits on it before
    `Request.build` reads any input file)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise PixcadeError("no prompts given")
    if any(not isinstance(p, str) for p in prompts):
        raise PixcadeError("prompts must be strings")
    return prompts


def _each_once(read: Callable[..., Any], *columns: list[Any]) -> list[Any]:
    """``read`` of each row of ``columns``, called once per distinct row of objects: an input
    given once for all prompts is read once and shared, not once per prompt."""
    done: dict[tuple[int, ...], Any] = {}
    out = []
    for row in zip(*columns):
        key = tuple(map(id, row))
        if key not in done:
            done[key] = read(*row)
        out.append(done[key])
    return out


@dataclass(frozen=True)
class Request:
    """Per prompt: its text, the negative prompt guidance steers away from, the start image
    of a run that begins at a super-resolution stage, and the image (with its mask) to edit;
    every list None or one entry per prompt. ``edit``: how images are edited (set exactly
    when ``images`` is). Made by `build`, which reads and checks everything."""

    prompts: list[str]
    negatives: list[str] | None = None
    starts: list[Image.Image] | None = None
    images: list[Image.Image] | None = None
    masks: list[Image.Image] | None = None
    edit: EditRequest | None = None

    @classmethod
    def build(
        cls,
        prompts: str | Sequence[str],
        *,
        negative_prompt: str | Sequence[str] | None = None,
        start_image: ImageSource | Sequence[ImageSource] | None = None,
        image: ImageSource | Sequence[ImageSource] | None = None,
        mask: ImageSource | Sequence[ImageSource] | None = None,
        edit: EditRequest | None = None,
    ) -> "Request":
        """Each input one for all prompts or one per prompt; files are read (and masks
        checked against their images) here, so a bad input fails before any sampling."""
        prompts = prompt_list(prompts)
        negatives = per_prompt(negative_prompt, prompts, "negative prompts")
        if negatives is not None and any(not isinstance(t, str) for t in negatives):
            raise PixcadeError("negative prompts must be strings")
        starts = per_prompt(start_image, prompts, "start images")
        images = per_prompt(image, prompts, "images to edit")
        masks = per_prompt(mask, prompts, "masks")
        if images is None and (masks is not None or edit is not None):
            raise PixcadeError("a mask or edit settings were given without an image to edit")
        if images is not None:
            images = _each_once(as_image, images)
            edit = edit or EditRequest()
        return cls(
            prompts, negatives,
            starts=_each_once(as_image, starts) if starts else None,
            images=images,
            masks=_each_once(as_mask, masks, images) if masks else None,
            edit=edit,
        )

    @property
    def start_side(self) -> int | None:
        """The first start image's shorter side (it chooses the stage a run starts at)."""
        return min(self.starts[0].size) if self.starts else None

    def select(self, jobs: Sequence[Job]) -> "Request":
        """One entry per job: job j's prompt's text, negative prompt, start image..."""
        picked = {}
        for f in fields(self):
            values = getattr(self, f.name)
            if isinstance(values, list):
                picked[f.name] = [values[j.prompt] for j in jobs]
        return replace(self, **picked)

    def edit_batch(self) -> EditBatch | None:
        """The images to edit (one per entry) as the pipeline's edit of a batch."""
        if self.images is None:
            return None
        return EditBatch(self.edit or EditRequest(), self.images, self.masks)
