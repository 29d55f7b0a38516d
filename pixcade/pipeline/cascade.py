"""`Cascade`: a text encoder plus a chain of stages (base, then super-resolution), sampled
end to end or from any stage to any later one."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from pixcade.data.transforms import square_tensor
from pixcade.diffusion.precision import check_dtype
from pixcade.errors import PixcadeError
from pixcade.limits import check_generation
from pixcade.pipeline import saving
from pixcade.pipeline.edits import EditRequest, ImageSource
from pixcade.pipeline.images import to_pil
from pixcade.pipeline.jobs import Job, all_jobs, batches, per_image_noise, per_image_step_noise
from pixcade.pipeline.options import PerStage, parse_assignment, resolve, settings_from_text
from pixcade.pipeline.placement import check_device, placed
from pixcade.pipeline.plan import Plan, StageBars, choose, stage_index
from pixcade.pipeline.request import Request, prompt_list
from pixcade.pipeline.shipped import resolve_model
from pixcade.stage import Stage
from pixcade.text.encoders import DEFAULT_ENCODER, load_text_encoder


@functools.lru_cache(maxsize=4)
def _load_encoder(name: str, max_length: int, device: str) -> Any:
    """Encoders are frozen, so cascades loaded in one process (a server, tests) share them."""

    return load_text_encoder(name, max_length=max_length, device=device)


class Cascade:
    """Text encoder + stages. Networks are put in eval mode: a cascade is for sampling."""

    def __init__(self, stages: Sequence[Stage], text_encoder: str = DEFAULT_ENCODER, max_length: int = 128):
        if not stages:
            raise PixcadeError("a cascade needs at least one stage")
        saving.validate_chain([s.config for s in stages])
        self.stages = list(stages)
        self.text_encoder = text_encoder
        self.max_length = max_length
        self._encoder: Any = None
        # With offloading, where the stages run (their weights wait on the CPU); else None.
        self._run_device: torch.device | None = None
        for s in self.stages:
            s.net.eval()

    # -- structure ----------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [s.config.name for s in self.stages]

    @property
    def device(self) -> torch.device:
        """Where sampling runs (with offloading, not where the weights wait)."""
        return self._run_device or next(self.stages[0].net.parameters()).device

    def stage(self, name: str) -> Stage:
        return self.stages[stage_index(self.stages, name)]

    def to(self, device: str | torch.device, offload: bool = False) -> "Cascade":
        """Run on ``device``. With ``offload`` the weights stay on the CPU and only the stage
        being sampled (and the text encoder while it encodes) is moved to ``device``: peak
        accelerator memory is the largest stage's, not the whole cascade's."""
        device = check_device(device)
        for s in self.stages:
            s.net.to("cpu" if offload else device)
        self._run_device = device if offload else None
        self._encoder = None  # reloaded on the new device when next needed
        return self

    @property
    def offloading(self) -> bool:
        return self._run_device is not None

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The texts' embeddings and masks, padded alike, on the run device."""
        encoder = self.encoder
        with placed(encoder.model, self._run_device):
            encoder.device = self.device
            try:
                emb, mask = encoder.encode(list(texts))
            finally:
                encoder.device = next(encoder.model.parameters()).device
        return emb.to(self.device), mask.to(self.device)

    @property
    def encoder(self) -> Any:
        """The text encoder, loaded on first use (saving or planning doesn't need it)."""
        if self._encoder is None:
            home = "cpu" if self.offloading else str(self.device)
            enc = _load_encoder(self.text_encoder, self.max_length, home)
            for s in self.stages:
                if s.config.unet.text_dim != enc.dim:
                    raise PixcadeError(
                        f"stage {s.config.name!r} expects {s.config.unet.text_dim}-d text embeddings "
                        f"but text encoder {self.text_encoder!r} gives {enc.dim}-d"
                    )
            self._encoder = enc
        return self._encoder

    # -- saving and loading ---------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, storage: str = "fp32") -> None:
        """Save to ``directory``; ``storage`` is the weight files' precision (fp32, fp16, bf16)."""
        config = saving.CascadeConfig(self.text_encoder, self.max_length, [s.config for s in self.stages])
        saving.save_cascade(directory, config, [s.net for s in self.stages], storage)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, device: str | torch.device = "cpu", offload: bool = False
    ) -> "Cascade":
        """A saved cascade folder, or a shipped model's name (`"shapes"`)."""
        directory = resolve_model(directory)
        config = saving.load_cascade_config(directory)
        stages = []
        for sc in config.stages:
            stage = Stage(sc)
            saving.load_weights(stage.net, directory / f"{sc.name}.safetensors", sc.name)
            stages.append(stage)
        return cls(stages, config.text_encoder, config.max_length).to(device, offload)

    @classmethod
    def from_stage_dirs(cls, run_dirs: Sequence[str | os.PathLike], device: str | torch.device = "cpu") -> "Cascade":
        """Assemble a cascade from the trainer's per-stage exports, given in cascade order."""
        if not run_dirs:
            raise PixcadeError("no stage directories given")
        exports = [saving.read_stage_export(d) for d in run_dirs]
        first = exports[0]
        for d, e in zip(run_dirs, exports):
            if (e.text_encoder, e.max_length) != (first.text_encoder, first.max_length):
                raise PixcadeError(
                    f"stage {e.config.name!r} ({d}) was trained with text encoder {e.text_encoder!r} "
                    f"(max_length {e.max_length}) but stage {first.config.name!r} with "
                    f"{first.text_encoder!r} (max_length {first.max_length})"
                )
        saving.validate_chain([e.config for e in exports], "assembled cascade")
        stages = []
        for e in exports:
            stage = Stage(e.config)
            saving.load_weights(stage.net, e.weights, e.config.name)
            stages.append(stage)
        return cls(stages, first.text_encoder, first.max_length).to(device)

    # -- planning -------------------------------------------------------------------------

    def plan(
        self,
        stages: Sequence[str] | None = None,
        stop_after: str | None = None,
        start_resolution: int | None = None,
        **overrides: PerStage,
    ) -> Plan:
        """Choose the stages to run (see `pixcade.pipeline.plan.choose`) and resolve their
        settings (each stage's saved ones with ``overrides``, see `pixcade.pipeline.options`),
        all checked before any work is done."""
        chosen = choose(self.stages, stages, stop_after, start_resolution)
        plan = Plan(chosen, resolve([s.config for s in chosen], **overrides))
        self.check_precision(plan)
        return plan

    def check_precision(self, plan: Plan) -> None:
        """Each stage's dtype must be one this cascade's device samples in (fp16: not the CPU)."""
        for name, settings in plan.settings.items():
            try:
                check_dtype(settings.dtype, self.device)
            except PixcadeError as err:
                raise PixcadeError(f"stage {name!r}: {err}") from None

    # -- sampling -------------------------------------------------------------------------

    def start_tensor(self, plan: Plan, images: Sequence[Image.Image]) -> torch.Tensor:
        """Start images as the first stage's low-res input ``[B, 3, r, r]`` on the device."""
        r = plan.stages[0].config.lowres_resolution
        return torch.stack([square_tensor(im, r) for im in images]).to(self.device)

    @torch.no_grad()
    def sample_batch(
        self,
        plan: Plan,
        request: Request,
        jobs: Sequence[Job],
        seed: int,
        bars: StageBars | None = None,
        on_stage: Callable[[str, torch.Tensor], None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run one batch (one image per job, from ``request``'s entry for its prompt) through
        the plan; each stage's output, in order, each also passed to ``on_stage`` the moment
        it is final.

        Each image's starting noise, an SR stage's noise for augmenting its low-res input
        and an ancestral sampler's fresh noise at each step come from (seed, stage, what the
        noise is for, prompt index, image index), drawn on the CPU, so an image is the same
        whatever its batch or device (up to float rounding), with every sampler. Negative
        prompts replace the empty prompt in guidance's unconditional pass; images to edit
        are edited instead of new ones drawn.
        """
        rows = request.select(jobs)
        if plan.needs_start != (rows.starts is not None):
            raise PixcadeError("a start image is needed exactly when the first stage is SR")
        edit = rows.edit_batch()
        if edit is not None:
            plan.check_editable()
        device = self.device
        texts, negatives = rows.prompts, rows.negatives
        # Negative prompts are encoded with the prompts so both are padded to one length.
        unique = list(dict.fromkeys([*texts, *(negatives or [])]))
        all_emb, all_mask = self.encode(unique)
        indices = torch.tensor([unique.index(t) for t in texts], device=device)
        emb, mask = all_emb[indices], all_mask[indices]
        uncond_text = None
        if negatives is not None:
            neg_indices = torch.tensor([unique.index(t) for t in negatives], device=device)
            uncond_text = (all_emb[neg_indices], all_mask[neg_indices])
        x = self.start_tensor(plan, rows.starts) if rows.starts is not None else None
        out: dict[str, torch.Tensor] = {}
        for stage in plan.stages:
            c = stage.config
            shape = (c.unet.out_channels, c.resolution, c.resolution)
            noise = per_image_noise(seed, c.name, jobs, shape).to(device)
            aug_noise = None
            if c.is_super_resolution:
                # Drawn apart from the starting noise (another key) and at the working
                # resolution, the shape of the upsampled low-res image it is added to.
                aug_noise = per_image_noise(seed, (c.name, "aug"), jobs, (3, c.resolution, c.resolution)).to(device)
            stage_edit = edit.stage_edit(c, stage is plan.stages[0], seed, jobs, device) if edit else None
            with placed(stage.net, self._run_device):
                x = stage.sample(
                    emb, mask, x if c.is_super_resolution else None,
                    noise=noise, aug_noise=aug_noise,
                    noise_sampler=per_image_step_noise(seed, c.name, jobs, shape, device),
                    callback=bars.callback(c.name) if bars else None,
                    settings=plan.settings[c.name], uncond_text=uncond_text, edit=stage_edit,
                )
            if edit is not None and stage is plan.stages[-1]:
                x = edit.finish(x, c)
            out[c.name] = x
            if on_stage is not None:
                on_stage(c.name, x)
        return out

    def generate(
        self,
        prompts: str | Sequence[str],
        n: int = 1,
        seed: int = 0,
        *,
        stages: Sequence[str] | None = None,
        start_image: ImageSource | Sequence[ImageSource] | None = None,
        stop_after: str | None = None,
        batch_size: int | None = None,
        return_stages: bool = False,
        progress: bool = True,
        negative_prompt: str | Sequence[str] | None = None,
        image: ImageSource | Sequence[ImageSource] | None = None,
        mask: ImageSource | Sequence[ImageSource] | None = None,
        edit: EditRequest | None = None,
        **overrides: PerStage,
    ) -> list[Image.Image] | dict[str, list[Image.Image]]:
        """``n`` images per prompt, prompt-major (prompt 0's images first).

        ``overrides`` are `SamplingSettings` fields (``sampler``, ``steps``,
        ``guidance_weight``, ``threshold``, ``aug_level``, ``spacing``, ``sampler_args``...),
        each one value for all stages or ``{stage name: value}``; unset ones come from each
        stage's config. ``start_image`` (one image, or one per prompt) starts
        the run at a super-resolution stage. With ``return_stages`` the result is
        ``{stage name: images}`` for every stage run, in order (the last is the final one).

        ``negative_prompt`` (one for all prompts, or one per prompt) is what guidance steers
        away from. ``image`` (one, or one per prompt) is edited instead of drawing a new
        image: from the image noised to ``edit.strength`` (image-to-image), and with a
        ``mask`` of the image's size (white = redraw) only the masked region is redrawn.
        """
        # The limits are checked before any input file is read.
        prompts = prompt_list(prompts)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PixcadeError(f"n (images per prompt) must be an integer >= 1, got {n!r}")
        check_generation(prompts, n, batch_size)
        request = Request.build(prompts, negative_prompt=negative_prompt, start_image=start_image,
                                image=image, mask=mask, edit=edit)
        plan = self.plan(stages, stop_after, request.start_side, **overrides)
        jobs = all_jobs(len(request.prompts), n)
        chunks = batches(jobs, batch_size or len(jobs))
        results: dict[str, list[Image.Image]] = {name: [] for name in plan.names}
        with StageBars(plan, len(chunks), enabled=progress) as bars:
            for chunk in chunks:
                for name, x in self.sample_batch(plan, request, chunk, seed, bars).items():
                    results[name].extend(to_pil(x))
        return results if return_stages else results[plan.names[-1]]


def assemble(
    run_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    settings: Sequence[str] = (),
    storage: str = "fp32",
) -> Cascade:
    """Build a cascade from trainer exports and save it as one model directory, its weight
    files in ``storage`` precision.

    ``settings`` are ``STAGE.KEY=VALUE`` texts (KEY a `SamplingSettings` field or
    ``sampler_args.NAME``) that replace what the stage's training config gave: sampling
    settings are chosen after training (on a validation set) and change no weight. They
    are checked before anything is written.
    """
    cascade = Cascade.from_stage_dirs(run_dirs)
    configs = [s.config for s in cascade.stages]
    assignments = [parse_assignment(text, cascade.names, need_stage=True) for text in settings]
    for stage, settings in settings_from_text(configs, assignments).items():
        config = cascade.stage(stage).config
        config.sampling = settings
    cascade.save_pretrained(out_dir, storage)
    return cascade
