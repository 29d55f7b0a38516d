"""The one thing the server needs from a model, and its implementation over `Cascade`.

The server never touches a cascade directly: it holds a `Model`, so its queueing, limits
and HTTP logic can be tested with a fake model, and the real one is this thin adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from PIL import Image

from pixcade.serve.requests import GenerationRequest

if TYPE_CHECKING:
    from pixcade.pipeline.cascade import Cascade
    from pixcade.pipeline.plan import Plan

# (stage, step, total): called after each sampling step of a stage.
ProgressFn = Callable[[str, int, int], None]
# (stage, images): called once a stage's images are final, in run order.
StageDoneFn = Callable[[str, list[Image.Image]], None]


@dataclass(frozen=True)
class StagePlan:
    """What a checked request will run on one stage: its steps and the precision its network
    runs in ("fp32", "bf16", "fp16": `auto` resolved for this device), recorded with the job
    as `pixcade generate` records it in run.json."""

    steps: int
    precision: str


class Model(Protocol):
    def describe(self) -> list[dict[str, Any]]:
        """Per stage, in cascade order: {"name", "resolution", "super_resolution", "steps",
        "guidance"} (the saved defaults), for the page and /api/config."""

    def check(self, request: GenerationRequest) -> dict[str, StagePlan]:
        """Raise PixcadeError if the model can't run the request; else {stage: its plan}."""

    def generate(self, request: GenerationRequest, on_progress: ProgressFn, on_stage_done: StageDoneFn) -> None:
        """Run the request, reporting progress and each stage's images as they finish."""


class _StepReporter:
    """Stands in for the CLI's progress bars: `Cascade.sample_batch` asks it for a per-stage
    step callback."""

    def __init__(self, on_progress: ProgressFn):
        self.on_progress = on_progress

    def callback(self, stage: str) -> Callable[[int, int, Any], None]:
        return lambda step, total, x0: self.on_progress(stage, step, total)


class CascadeModel:
    """A `Cascade` behind the `Model` interface.

    A job is one prompt with ``n`` images, sampled as one batch of jobs (0, 0..n-1) with the
    request's seed: exactly what `pixcade generate PROMPT --n n --seed s` samples (its batch
    of up to 16 holds the same jobs), so a served image can be reproduced from the CLI.
    Each stage's images are shown the moment they are final.
    """

    def __init__(self, cascade: Cascade):
        self.cascade = cascade

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": s.config.name, "resolution": s.config.resolution,
                "super_resolution": s.config.is_super_resolution,
                "steps": s.config.sampling.steps, "guidance": s.config.sampling.guidance_weight,
            }
            for s in self.cascade.stages
        ]

    def _plan(self, request: GenerationRequest) -> Plan:
        return self.cascade.plan(list(request.stages), **request.overrides())

    def check(self, request: GenerationRequest) -> dict[str, StagePlan]:
        from pixcade.diffusion.precision import stage_precisions  # loads torch (see generate)

        plan = self._plan(request)
        if request.image is not None:
            plan.check_editable()
        precision = stage_precisions(plan.settings, self.cascade.device)
        return {name: StagePlan(s.steps, precision[name]) for name, s in plan.settings.items()}

    def generate(self, request: GenerationRequest, on_progress: ProgressFn, on_stage_done: StageDoneFn) -> None:
        # Imported here: the pipeline loads torch, and `Model` (this module) is imported by
        # the server, whose --help and argument errors answer without it.
        from pixcade.pipeline.edits import EditRequest
        from pixcade.pipeline.images import to_pil
        from pixcade.pipeline.jobs import all_jobs
        from pixcade.pipeline.request import Request

        asked = Request.build(
            request.prompt, negative_prompt=request.negative_prompt, image=request.image, mask=request.mask,
            edit=EditRequest(strength=request.strength) if request.image is not None else None,
        )
        self.cascade.sample_batch(self._plan(request), asked, all_jobs(1, request.n), request.seed,
                                  bars=_StepReporter(on_progress),
                                  on_stage=lambda name, x: on_stage_done(name, to_pil(x)))
