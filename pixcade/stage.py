"""One stage of the cascade: a U-Net, its noise schedule and parameterisation.

This is the only place that knows how a stage's network is conditioned (text, the
low-res image, the noise-augmentation level), so training and sampling can't disagree.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from pixcade.diffusion.editing import ImageEdit, noise_to, sample_edit
from pixcade.diffusion.guidance import guided_denoiser
from pixcade.diffusion.losses import HIGH_NOISE_FROM, diffusion_loss
from pixcade.diffusion.parameterization import PARAMETERIZATIONS
from pixcade.diffusion.precision import autocast_net, check_dtype
from pixcade.diffusion.samplers import NoiseSampler, generator_noise, sample
from pixcade.diffusion.schedules import alpha_sigma, get_schedule
from pixcade.diffusion.settings import FIELD_NAMES, SamplingSettings
from pixcade.errors import PixcadeError
from pixcade.limits import check_limit
from pixcade.nn.configs import UNetConfig
from pixcade.nn.unet import EfficientUNet
from pixcade.schema import from_json


@dataclass
class StageConfig:
    # The stage's name in the cascade ("base", "sr"): CLI options, weights files and
    # per-stage settings refer to it.
    name: str
    # Side of the square images the stage makes.
    resolution: int
    # The network (a `UNetConfig`; a dict is read as one).
    unet: UNetConfig
    # Set for super-resolution stages: the side of the image they are given (the previous
    # stage's resolution).
    lowres_resolution: int | None = None
    # Super-resolution stages without self-attention may train on random crops of this
    # size; sampling always runs at the full resolution.
    train_crop: int | None = None
    # The noise schedule, a name for `diffusion.schedules.get_schedule`; training and
    # sampling must use the same one, so it is saved with the weights.
    schedule: str = "cosine"
    # What the network predicts: "eps", "v" or "x0" (`diffusion.parameterization`).
    parameterization: str = "eps"
    # How the stage samples unless told otherwise, saved with the model so `generate`
    # works without flags.
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    # Set on a progressively distilled student (Salimans & Ho 2022): the number of
    # deterministic DDIM steps, on the grid uniform in t, that it was trained to take.
    distilled_steps: int | None = None
    # Set on a student halved straight from a stage that guides with two passes: the
    # guidance weight its one pass reproduces. The weight is in its weights, so it samples
    # with guidance_weight 1 (guiding it again would apply guidance twice).
    distilled_guidance: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.unet, dict):
            self.unet = UNetConfig.from_dict(self.unet)
        for side in (self.resolution, self.lowres_resolution, self.train_crop):
            if side is not None:
                check_limit("resolution", side, f"stage {self.name!r}: an image side")
        get_schedule(self.schedule)  # validates the name
        if self.parameterization not in PARAMETERIZATIONS:
            raise PixcadeError(
                f"stage {self.name!r}: unknown parameterization {self.parameterization!r} "
                f"(choose from {', '.join(PARAMETERIZATIONS)})"
            )
        if isinstance(self.sampling, dict):
            try:
                self.sampling = SamplingSettings.from_dict(self.sampling)
            except PixcadeError as err:
                raise PixcadeError(f"stage {self.name!r}: {err}") from None
        if not isinstance(self.sampling, SamplingSettings):
            raise PixcadeError(f"stage {self.name!r}: sampling must be SamplingSettings, got {self.sampling!r}")
        self.check_sampling(self.sampling)
        if self.distilled_steps is not None and (
            isinstance(self.distilled_steps, bool) or not isinstance(self.distilled_steps, int)
            or self.distilled_steps < 1
        ):
            raise PixcadeError(
                f"stage {self.name!r}: distilled_steps must be a positive integer, got {self.distilled_steps!r}"
            )
        if self.distilled_guidance is not None and (
            isinstance(self.distilled_guidance, bool) or not isinstance(self.distilled_guidance, (int, float))
            or not self.distilled_guidance > 1.0
        ):
            raise PixcadeError(
                f"stage {self.name!r}: distilled_guidance must be a guidance weight above 1, got {self.distilled_guidance!r}"
            )
        if self.is_super_resolution != bool(self.unet.lowres_cond):
            raise PixcadeError(
                f"stage {self.name!r}: lowres_resolution and the U-Net's lowres_cond disagree"
            )
        if self.unet.coord_channels and self.train_crop is not None and self.train_crop != self.resolution:
            raise PixcadeError(
                f"stage {self.name!r}: coord_channels with train_crop {self.train_crop}: a crop's pixel "
                "coordinates are not the image's, so the U-Net would learn positions that sampling never sees"
            )

    @property
    def is_super_resolution(self) -> bool:
        return self.lowres_resolution is not None

    @property
    def guidance_conditioned(self) -> bool:
        """Whether the network takes the guidance weight as an input (one pass per step)."""
        return self.unet.guidance_conditioned

    def two_passes(self, settings: SamplingSettings | None = None) -> bool:
        """Whether each denoiser call runs the network twice (conditional and unconditional):
        classifier-free guidance (weight not 1) on a network that does not take the weight
        as an input. The two passes run as one forward on twice the batch
        (`guidance.guided_output`)."""
        s = settings if settings is not None else self.sampling
        return not self.guidance_conditioned and s.guidance_weight != 1.0

    def network_evaluations(self, settings: SamplingSettings | None = None) -> int:
        """U-Net evaluations per image of one sample drawn from noise with ``settings``
        (default: the saved ones), the unit a sampler's cost is compared in: one per
        denoiser call (a sampler makes ``steps`` of them), two where `two_passes`."""
        s = settings if settings is not None else self.sampling
        return s.steps * (2 if self.two_passes(s) else 1)

    def distilled_guidance_refusal(self, why: str) -> PixcadeError:
        """The error for asking a stage with its guidance distilled in (`distilled_guidance`)
        for something only a two-pass guided stage has; ``why`` says what is missing."""
        return PixcadeError(f"stage {self.name!r} has guidance weight {self.distilled_guidance:g} distilled into "
                            f"its one pass: {why}")

    def check_sampling(self, settings: SamplingSettings) -> None:
        """What this stage adds to the settings' own checks: only an SR stage has a
        noise-augmentation level and an input to start from; a stage with its guidance
        distilled in (`distilled_guidance`) is not guided again."""
        if self.distilled_guidance is not None and settings.guidance_weight != 1.0:
            raise self.distilled_guidance_refusal(f"it samples with guidance_weight 1, not {settings.guidance_weight:g}")
        if not self.is_super_resolution and settings.aug_level != 0.0:
            raise PixcadeError(
                f"stage {self.name!r} is not a super-resolution stage: it takes no noise-augmentation level"
            )
        if not self.is_super_resolution and settings.start != 1.0:
            raise PixcadeError(
                f"stage {self.name!r} is not a super-resolution stage: it has no input to start from "
                f"(start must be 1, got {settings.start:g})"
            )

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["unet"] = self.unet.to_dict()
        d["sampling"] = self.sampling.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StageConfig":
        """Also reads configs from before `sampling` existed, whose sampling fields sit flat
        on the stage."""
        flat = {k: d[k] for k in FIELD_NAMES if k in d}
        if flat:
            if "sampling" in d:
                raise PixcadeError(f"stage config has both 'sampling' and flat sampling keys {sorted(flat)}")
            d = {k: v for k, v in d.items() if k not in flat} | {"sampling": flat}
        return from_json(cls, d, "stage config")


def upsample(lowres: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bicubic upsampling to the stage's resolution (clamped: bicubic overshoots)."""
    if lowres.shape[-1] == resolution and lowres.shape[-2] == resolution:
        return lowres
    up = F.interpolate(lowres, size=(resolution, resolution), mode="bicubic", align_corners=False)
    return up.clamp(-1.0, 1.0)


def unconditional(
    cond: dict[str, torch.Tensor], negative: tuple[torch.Tensor, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The same conditioning with the text replaced by the null input (an all-False mask),
    or by ``negative`` = (embedding, mask) of negative prompts padded like the text."""
    uncond = dict(cond)
    if negative is None:
        uncond["text_emb"] = torch.zeros_like(cond["text_emb"])
        uncond["text_mask"] = torch.zeros_like(cond["text_mask"])
        return uncond
    if negative[0].shape != cond["text_emb"].shape or negative[1].shape != cond["text_mask"].shape:
        raise PixcadeError(
            f"negative prompt embedding {list(negative[0].shape)} does not match the text's "
            f"{list(cond['text_emb'].shape)}"
        )
    uncond["text_emb"], uncond["text_mask"] = negative
    return uncond


class Stage:
    """A stage's network plus the diffusion process it was trained with."""

    def __init__(self, config: StageConfig, net: EfficientUNet | None = None):
        self.config = config
        self.net = net if net is not None else EfficientUNet(config.unet)
        self.schedule = get_schedule(config.schedule)

    # -- conditioning -------------------------------------------------------------------

    def conditioning(
        self,
        text_emb: torch.Tensor,
        text_mask: torch.Tensor,
        lowres: torch.Tensor | None = None,
        aug_t: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        resolution: int | None = None,
        aug_noise: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The keyword arguments of the U-Net besides (z, t).

        ``guidance`` is the guidance weight [B] a guidance-conditioned stage takes (and only it).

        For SR stages the low-res image is upsampled to the working resolution and
        noise-augmented to level ``aug_t`` (a forward diffusion of the same schedule), so
        the network learns to fix the artefacts the previous stage leaves behind. The
        augmentation noise is ``aug_noise`` when given (the shape of the upsampled image),
        else drawn from ``generator``.
        """
        cond: dict[str, torch.Tensor] = {"text_emb": text_emb, "text_mask": text_mask}
        if self.config.guidance_conditioned != (guidance is not None):
            raise PixcadeError(
                f"stage {self.config.name!r} is guidance-conditioned: it needs a guidance weight"
                if guidance is None else f"stage {self.config.name!r} takes no guidance weight as input"
            )
        if guidance is not None:
            cond["guidance"] = guidance
        if not self.config.is_super_resolution:
            if lowres is not None:
                raise PixcadeError(f"stage {self.config.name!r} is not a super-resolution stage")
            return cond
        if lowres is None:
            raise PixcadeError(f"super-resolution stage {self.config.name!r} needs a low-res image")
        b = lowres.shape[0]
        if aug_t is None:
            aug_t = torch.zeros(b, device=lowres.device)
        up = upsample(lowres, resolution or self.config.resolution)
        alpha, sigma = alpha_sigma(self.schedule.log_snr(aug_t.to(up.dtype)).view(-1, 1, 1, 1))
        if aug_noise is None:
            noise = torch.randn(up.shape, generator=generator, device=up.device, dtype=up.dtype)
        elif aug_noise.shape != up.shape:
            raise PixcadeError(
                f"stage {self.config.name!r}: augmentation noise has shape {list(aug_noise.shape)}, "
                f"expected {list(up.shape)}"
            )
        else:
            noise = aug_noise.to(device=up.device, dtype=up.dtype)
        cond["lowres"] = alpha * up + sigma * noise
        cond["aug_t"] = aug_t
        return cond

    # -- training -----------------------------------------------------------------------

    def loss(
        self,
        images: torch.Tensor,
        text_emb: torch.Tensor,
        text_mask: torch.Tensor,
        lowres: torch.Tensor | None = None,
        *,
        cond_drop_prob: float = 0.0,
        min_snr_gamma: float | None = None,
        high_noise_share: float = 0.0,
        high_noise_from: float = HIGH_NOISE_FROM,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-sample training loss (t as `diffusion_loss` draws it).

        Each row's text is replaced by the null input (zero embedding, all-False mask) with
        probability ``cond_drop_prob``, so the network also learns the unconditional model
        classifier-free guidance needs. The dropout draw is made at every rate, so a
        different rate does not shift the rest of the stream. SR stages draw the
        augmentation level uniformly in [0, 1].
        """
        drop = torch.rand(images.shape[0], generator=generator, device=images.device) < cond_drop_prob
        text_mask = text_mask & ~drop[:, None]
        text_emb = text_emb * (~drop).to(text_emb.dtype)[:, None, None]
        aug_t = None
        if self.config.is_super_resolution:
            if lowres is None:
                raise PixcadeError(f"super-resolution stage {self.config.name!r} needs a low-res image")
            aug_t = torch.rand(images.shape[0], generator=generator, device=images.device)
        cond = self.conditioning(
            text_emb, text_mask, lowres, aug_t, generator, resolution=images.shape[-1]
        )
        return diffusion_loss(
            lambda z, t: self.net(z, t, **cond),
            images,
            self.schedule,
            self.config.parameterization,
            min_snr_gamma=min_snr_gamma,
            high_noise_share=high_noise_share,
            high_noise_from=high_noise_from,
            generator=generator,
        )

    # -- sampling -----------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        text_emb: torch.Tensor,
        text_mask: torch.Tensor,
        lowres: torch.Tensor | None = None,
        *,
        settings: SamplingSettings | None = None,
        generator: torch.Generator | None = None,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        noise: torch.Tensor | None = None,
        aug_noise: torch.Tensor | None = None,
        noise_sampler: NoiseSampler | None = None,
        uncond_text: tuple[torch.Tensor, torch.Tensor] | None = None,
        edit: ImageEdit | None = None,
        **overrides: Any,
    ) -> torch.Tensor:
        """Images in [-1, 1], one per text row.

        ``settings`` (default: the config's) with ``overrides`` (`SamplingSettings` fields;
        None values are ignored) applied. ``noise`` is the starting z at t=1, ``aug_noise``
        an SR stage's noise for the augmentation of its low-res input and ``noise_sampler``
        an ancestral sampler's fresh noise per step (each drawn from ``generator`` when not
        given): the pipeline draws all three per image so an image does not depend on its
        batch-mates. ``uncond_text`` = (embedding, mask) of negative prompts, padded like the
        text, replaces the empty prompt in guidance's unconditional pass; ``edit`` edits an
        existing image (SDEdit, inpainting) instead of drawing a new one.
        """
        c = self.config
        s = settings if settings is not None else c.sampling
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if overrides:
            s = s.replace(**overrides)
        c.check_sampling(s)

        b = text_emb.shape[0]
        device = text_emb.device
        aug_t = torch.full((b,), s.aug_level, device=device) if c.is_super_resolution else None
        if c.guidance_conditioned:  # the weight is an input: one pass per step
            if uncond_text is not None:
                raise PixcadeError(
                    f"stage {c.name!r} takes its guidance weight as an input (a distilled stage): "
                    "it has no unconditional pass for a negative prompt to replace"
                )
            w_in = torch.full((b,), s.guidance_weight, device=device)
            cond = self.conditioning(text_emb, text_mask, lowres, aug_t, generator, aug_noise=aug_noise, guidance=w_in)
            uncond = None
        else:
            if uncond_text is not None and c.distilled_guidance is not None:
                raise c.distilled_guidance_refusal("it has no unconditional pass for a negative prompt to replace")
            cond = self.conditioning(text_emb, text_mask, lowres, aug_t, generator, aug_noise=aug_noise)
            uncond = unconditional(cond, uncond_text)
        net = autocast_net(self.net, check_dtype(s.dtype, device), device)
        denoiser = guided_denoiser(net, self.schedule, c.parameterization, cond, uncond, s.guidance_weight, s.threshold)
        shape = (b, c.unet.out_channels, c.resolution, c.resolution)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=device)
        elif tuple(noise.shape) != shape:
            raise PixcadeError(f"stage {c.name!r}: noise has shape {list(noise.shape)}, expected {list(shape)}")
        if noise_sampler is None:
            noise_sampler = generator_noise(noise, generator)
        z = noise
        if edit is not None:  # an edit says where to start (an SR stage's start applies to plain sampling)
            run = functools.partial(sample_edit, edit)
        elif s.start < 1.0:
            z = noise_to(upsample(lowres, c.resolution), noise, self.schedule, s.start)
            run = functools.partial(sample, t_max=s.start)
        else:
            run = sample
        return run(
            denoiser, self.schedule, z, s.sampler, steps=s.steps, spacing=s.spacing,
            noise_sampler=noise_sampler, callback=callback, **s.sampler_args,
        ).clamp(-1.0, 1.0)
