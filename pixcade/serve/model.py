"""The one thing the server needs from a model, and its implementation over `Cascade`.

The server never touches a cascade directly: it holds a `Model`, so its queueing, limits
and HTTP logic can be tested with a fake model, and the real one is this thin adapter.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from PIL import Image

from pixcade.serve.requests import GenerationRequest

# (stage, step, total): called after each sampling step of a stage.
ProgressFn = Callable[[str, int, int], None]
# (stage, images): called once a stage's images are final, in run order.
StageDoneFn = Callable[[str, list[Image.Image]], None]


class Model(Protocol):
    def describe(self) -> list[dict[str, Any]]:
        """Per stage, in cascade order: {"name", "resolution", "super_resolution", "steps",
        "guidance"} (the saved defaults), for the page and /api/config."""

    def check(self, request: GenerationRequest) -> dict[str, int]:
        """Raise PixcadeError if the model can't run the request; else {stage: steps}."""

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
    Stages run one at a time (each its own one-stage plan, fed the previous stage's output)
    so each stage's images can be shown the moment they are done; seeding depends only on
    (seed, stage, jobs), so this gives the same images as running the whole plan at once.
    """

    def __init__(self, cascade: Any):
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

    def _plan(self, request: GenerationRequest) -> Any:
        return self.cascade.plan(list(request.stages), **request.overrides())

    def check(self, request: GenerationRequest) -> dict[str, int]:
        plan = self._plan(request)
        if request.image is not None:
            plan.check_editable()
        return {name: settings.steps for name, settings in plan.settings.items()}

    def generate(self, request: GenerationRequest, on_progress: ProgressFn, on_stage_done: StageDoneFn) -> None:
        from pixcade.pipeline.cascade import Plan
        from pixcade.pipeline.images import to_pil
        from pixcade.pipeline.jobs import all_jobs

        plan = self._plan(request)
        jobs = all_jobs(1, request.n)
        texts = [request.prompt] * request.n
        negatives = [request.negative_prompt] * request.n if request.negative_prompt is not None else None
        reporter = _StepReporter(on_progress)
        if request.image is not None:
            # An edit spans the stages (the strength is the first's, the mask every stage's):
            # one run of the whole plan, each stage's images shown when it is done.
            out = self.cascade.sample_batch(plan, texts, jobs, request.seed, bars=reporter, negatives=negatives,
                                            edit=edit_batch(request))
            for name, x in out.items():
                on_stage_done(name, to_pil(x))
            return
        x = None
        for stage in plan.stages:
            name = stage.config.name
            one = Plan([stage], {name: plan.settings[name]})
            x = self.cascade.sample_batch(one, texts, jobs, request.seed, start=x, bars=reporter,
                                          negatives=negatives)[name]
            on_stage_done(name, to_pil(x))


def edit_batch(request: GenerationRequest) -> Any:
    """The request's image (and mask) as the pipeline's edit of its ``n`` images."""
    from pixcade.pipeline.edits import EditBatch, EditRequest

    masks = [request.mask] * request.n if request.mask is not None else None
    return EditBatch(EditRequest(strength=request.strength), [request.image] * request.n, masks)
