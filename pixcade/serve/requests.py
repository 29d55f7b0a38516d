"""What a client may ask the server for, and the server's limits on it.

A generation request arrives as JSON. It is checked here, completely, before it is queued:
a request the server would refuse never takes a queue slot or a job id. Each refusal is a
`RequestError` carrying the HTTP status, a one-line message and, for a configured limit,
the limit's name and value, so a client can show exactly what to change.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from PIL import Image

from pixcade.data.samples import DECODE_ERRORS
from pixcade.errors import PixcadeError
from pixcade.web.errors import RequestError

FIELDS = ("prompt", "n", "seed", "guidance", "steps", "stages", "sampling",
          "negative_prompt", "image", "mask", "strength")
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Limits:
    """The server's configured limits. ``stages`` = the stages a request may run (None: all)."""

    max_prompt_chars: int = 500
    max_images: int = 4
    max_steps: int = 100
    stages: tuple[str, ...] | None = None
    max_queue: int = 8
    # Room for an image to edit and its mask as base64 PNGs (a 256 px RGB PNG is at most
    # ~200 KB raw, ~260 KB as base64) besides the rest of the request.
    max_body_bytes: int = 640 * 1024
    max_image_side: int = 256

    def __post_init__(self) -> None:
        for name in ("max_prompt_chars", "max_images", "max_steps", "max_queue", "max_body_bytes", "max_image_side"):
            if getattr(self, name) < 1:
                raise PixcadeError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.stages is not None and not self.stages:
            raise PixcadeError("the allowed stages must not be empty")

    def to_json(self) -> dict[str, Any]:
        return {
            "max_prompt_chars": self.max_prompt_chars, "max_images": self.max_images,
            "max_steps": self.max_steps, "stages": list(self.stages) if self.stages else None,
            "max_queue": self.max_queue, "max_body_bytes": self.max_body_bytes,
            "max_image_side": self.max_image_side,
        }


@dataclass(frozen=True)
class GenerationRequest:
    """A checked request. ``guidance``/``steps``: None (stage defaults), one value, or per
    stage. ``sampling``: any other `SamplingSettings` fields, each one value or per stage
    (``Cascade.generate``'s overrides; the model checks their values)."""

    prompt: str
    n: int = 1
    seed: int = 0
    guidance: float | dict[str, float] | None = None
    steps: int | dict[str, int] | None = None
    stages: tuple[str, ...] = field(default_factory=tuple)
    sampling: dict[str, Any] = field(default_factory=dict)
    # Editing: what guidance steers away from, and an image (with a mask: inpainting) to
    # edit from the SDEdit ``strength`` (decoded: RGB, and the mask as `as_mask` makes it).
    negative_prompt: str | None = None
    image: Image.Image | None = None
    mask: Image.Image | None = None
    strength: float = 1.0

    def overrides(self) -> dict[str, Any]:
        """All the request's sampling overrides, by `SamplingSettings` field."""
        return {"steps": self.steps, "guidance_weight": self.guidance, **self.sampling}

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt, "n": self.n, "seed": self.seed, "guidance": self.guidance,
            "steps": self.steps, "stages": list(self.stages), "sampling": self.sampling,
            "negative_prompt": self.negative_prompt, "strength": self.strength,
            "image": self.image is not None, "mask": self.mask is not None,
        }


def _bad(message: str) -> RequestError:
    return RequestError(400, message)


def _over(message: str, limit: str, value: Any) -> RequestError:
    return RequestError(422, message, limit, value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _runnable(check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one of the pipeline's option checks: what it refuses, the model could not run (422)."""
    try:
        return check(*args, **kwargs)
    except PixcadeError as err:
        raise RequestError(422, str(err)) from None


def _check_length(text: str, name: str, limits: Limits) -> None:
    if len(text) > limits.max_prompt_chars:
        raise _over(f"{name} is {len(text)} characters; this server's limit (max_prompt_chars) is "
                    f"{limits.max_prompt_chars}", "max_prompt_chars", limits.max_prompt_chars)


def _per_stage(value: Any, name: str, stages: Sequence[str], check: Callable[[Any], Any]) -> Any:
    """One value for every stage run, or ``{stage: value}`` naming only stages that run."""
    # Imported when used: the pipeline loads torch, which importing the server must not.
    from pixcade.pipeline import options

    if value is None:
        return None
    _runnable(options.check_stage_names, name, value, stages)
    if isinstance(value, Mapping):
        return {k: check(v) for k, v in value.items()}
    return check(value)


def parse_request(payload: Any, limits: Limits, model_stages: Sequence[str]) -> GenerationRequest:
    """Check a decoded JSON body against the limits; raise RequestError on the first problem."""
    if not isinstance(payload, dict):
        raise _bad(f"the request body must be a JSON object, got {type(payload).__name__}")
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise _bad(f"unknown field(s): {', '.join(unknown)} (fields: {', '.join(FIELDS)})")

    prompt = payload.get("prompt")
    if not isinstance(prompt, str):
        raise _bad("prompt must be a string")
    if not prompt.strip():
        raise RequestError(422, "prompt is empty")
    _check_length(prompt, "prompt", limits)

    n = payload.get("n", 1)
    if not _is_int(n):
        raise _bad("n (images) must be an integer")
    if n < 1:
        raise RequestError(422, f"n (images) must be at least 1, got {n}")
    if n > limits.max_images:
        raise _over(
            f"{n} images asked for; this server's limit (max_images) is {limits.max_images} per job",
            "max_images", limits.max_images,
        )

    seed = payload.get("seed", 0)
    if not _is_int(seed):
        raise _bad("seed must be an integer")
    if not 0 <= seed <= MAX_SEED:
        raise RequestError(422, f"seed must be in [0, 2**63 - 1], got {seed}")

    allowed = list(limits.stages) if limits.stages else list(model_stages)
    stages = payload.get("stages")
    if stages is None:
        stages = allowed
    elif not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
        raise _bad("stages must be a list of stage names")
    elif not stages:
        raise RequestError(422, "stages is empty")
    refused = [s for s in stages if s not in allowed]
    if refused:
        raise _over(
            f"stage(s) {', '.join(map(repr, refused))} not allowed on this server "
            f"(allowed stages: {', '.join(allowed)})", "stages", allowed,
        )

    # The rules on values are the pipeline's (Cascade.plan applies them again to the
    # resolved settings); here they run before the request takes a queue slot.
    from pixcade.diffusion.settings import FIELD_NAMES, SamplingSettings
    from pixcade.pipeline import options

    def check_guidance(v: Any) -> float:
        if not _is_number(v):
            raise _bad("guidance must be a finite number (or {stage: number})")
        _runnable(SamplingSettings().replace, guidance_weight=v)
        return float(v)

    def check_steps(v: Any) -> int:
        if not _is_int(v):
            raise _bad("steps must be an integer (or {stage: integer})")
        if v > limits.max_steps:
            raise _over(
                f"{v} steps asked for; this server's limit (max_steps) is {limits.max_steps}",
                "max_steps", limits.max_steps,
            )
        _runnable(SamplingSettings().replace, steps=v)
        return v

    sampling = payload.get("sampling", {})
    if not isinstance(sampling, dict):
        raise _bad("sampling must be an object of sampling settings")
    refused = sorted(set(sampling) - (set(FIELD_NAMES) - {"steps", "guidance_weight"}))
    if refused:
        raise _bad(f"sampling: unknown or top-level field(s) {', '.join(refused)} (use \"steps\" and "
                   f"\"guidance\" at the top level)")
    for name, value in sampling.items():
        _runnable(options.check_stage_names, name, value, stages)

    negative = payload.get("negative_prompt")
    if negative is not None:
        if not isinstance(negative, str):
            raise _bad("negative_prompt must be a string")
        _check_length(negative, "negative_prompt", limits)
    image, mask, strength = _edit_fields(payload, limits)

    return GenerationRequest(
        negative_prompt=negative, image=image, mask=mask, strength=strength,
        prompt=prompt, n=n, seed=seed,
        guidance=_per_stage(payload.get("guidance"), "guidance", stages, check_guidance),
        steps=_per_stage(payload.get("steps"), "steps", stages, check_steps),
        stages=tuple(stages), sampling=sampling,
    )


def _png(value: Any, name: str, limits: Limits) -> Image.Image:
    """A base64 PNG (a data: URL or the bare base64), decoded."""
    if not isinstance(value, str):
        raise _bad(f"{name} must be a base64 PNG (data:image/png;base64,...)")
    data = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{name} is not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if max(im.size) > limits.max_image_side:
                raise _over(f"{name} is {im.size[0]}x{im.size[1]}; this server's limit (max_image_side) "
                            f"is {limits.max_image_side} px", "max_image_side", limits.max_image_side)
            im.load()
            return im.copy()
    except RequestError:
        raise
    except DECODE_ERRORS as err:
        raise RequestError(422, f"cannot read {name}: {err}") from None


def _edit_fields(payload: Mapping[str, Any], limits: Limits) -> tuple[Image.Image | None, Image.Image | None, float]:
    """(image, mask, strength) of a request, checked as `Cascade.generate` would."""
    # The pipeline's own checks; imported here as it loads torch (see `_per_stage`).
    from pixcade.diffusion.editing import check_strength
    from pixcade.pipeline.edits import as_mask

    strength = payload.get("strength", 1.0)
    if not _is_number(strength):
        raise _bad("strength must be a finite number")
    strength = _runnable(check_strength, strength)
    if payload.get("image") is None:
        if payload.get("mask") is not None or "strength" in payload:
            raise RequestError(422, "mask and strength need an image to edit")
        return None, None, strength
    image = _png(payload["image"], "image", limits).convert("RGB")
    mask = None
    if payload.get("mask") is not None:
        mask = _runnable(as_mask, _png(payload["mask"], "mask", limits), image)
    return image, mask, strength


def check_resolved_steps(steps_by_stage: Mapping[str, int], limits: Limits) -> None:
    """A stage's saved default may exceed the server's step limit: refuse rather than run it."""
    for stage, steps in steps_by_stage.items():
        if steps > limits.max_steps:
            raise _over(
                f"stage {stage!r} defaults to {steps} steps; this server's limit (max_steps) is "
                f"{limits.max_steps}: ask for fewer steps", "max_steps", limits.max_steps,
            )
