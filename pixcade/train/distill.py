"""Distillation as a training objective: the teacher, the student it makes, and the loss.

`pixcade distill` is `pixcade train` (same loop, checkpoints, resume, DDP, logs, export)
with the diffusion loss replaced by `Distillation.loss`. The student is a normal stage:
its config is the teacher's with the changes `student_config` makes, and its network
starts from the teacher's weights, so a student at step 0 samples as its teacher does
(the guided phase's new guidance embedding is zero-initialised).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pixcade.diffusion.distillation import (
    check_halving, guided_distillation_loss, halving_loss, thresholded_output,
)
from pixcade.diffusion.guidance import guided_denoiser, guided_output, parse_threshold
from pixcade.errors import PixcadeError
from pixcade.pipeline import saving
from pixcade.stage import Stage, StageConfig, unconditional
from pixcade.train.config import CascadeTrainConfig, DistillConfig, StageEntry


@dataclass
class Teacher:
    stage: Stage  # frozen, in eval mode
    text_encoder: str
    max_length: int


def load_teacher(source: str | Path, name: str, device: torch.device | str = "cpu") -> Teacher:
    """The stage ``name`` of a trainer export, of ``CASCADE_DIR:STAGE`` or of a cascade
    directory (its stage called ``name``), frozen."""
    spec = str(source)
    if (Path(spec) / saving.CONFIG_NAME).is_file():
        spec = f"{spec}:{name}"
    export = saving.read_stage_export(spec)
    if export.config.name != name:
        raise PixcadeError(f"distill.teacher {source} is stage {export.config.name!r}, not {name!r}")
    stage = Stage(export.config)
    saving.load_weights(stage.net, export.weights, name)
    stage.net.to(device).eval().requires_grad_(False)
    return Teacher(stage, export.text_encoder, export.max_length)


@dataclass(frozen=True)
class DistillSetup:
    """What the trainer needs to run a distillation entry: the frozen teacher, the phase, and
    the student's stage config (the run's stage config: checkpoints and exports record it)."""

    teacher: Stage
    cfg: DistillConfig
    student: StageConfig


def prepare(config: CascadeTrainConfig, entry: StageEntry, device: torch.device | str = "cpu") -> DistillSetup:
    """Load ``entry``'s teacher and make its student's config; every mismatch is named."""
    cfg = entry.distill
    if cfg is None:
        raise PixcadeError(f"stage {entry.name!r} has no distill section: train it with `pixcade train`")
    if entry.train.init_from:
        raise PixcadeError(f"stage {entry.name!r}: a student starts from its teacher's weights; "
                           "train.init_from is for `pixcade train`")
    teacher = load_teacher(cfg.teacher, entry.name, device)
    if (teacher.text_encoder, teacher.max_length) != (config.text_encoder, config.max_length):
        raise PixcadeError(
            f"distill.teacher {cfg.teacher} was trained with text encoder {teacher.text_encoder!r} (max_length "
            f"{teacher.max_length}), the config names {config.text_encoder!r} (max_length {config.max_length})"
        )
    return DistillSetup(teacher.stage, cfg, student_config(teacher.stage.config, cfg))


def student_config(teacher: StageConfig, cfg: DistillConfig) -> StageConfig:
    """The student's stage config: the teacher's, made w-conditioned (phase ``guided``) or
    with ``distilled_steps`` and a deterministic DDIM default of that many steps (``halve``).

    Every input that cannot be distilled is a PixcadeError naming the problem.
    """
    name = teacher.name
    if cfg.phase == "guided":
        if teacher.guidance_conditioned:
            raise PixcadeError(f"stage {name!r} already takes the guidance weight as an input: "
                               "distil its steps (distill.phase 'halve')")
        if teacher.distilled_guidance is not None:
            raise teacher.distilled_guidance_refusal("there is no guidance left to distil")
        if teacher.distilled_steps is not None:
            raise PixcadeError(f"stage {name!r} is step-distilled: distil guidance before halving steps")
        if teacher.sampling.guidance_weight == 1.0:
            raise PixcadeError(
                f"stage {name!r} samples unguided (guidance_weight 1): there is no guidance to distil; "
                f"halve its steps directly (distill.phase 'halve') or give it a guidance weight first "
                f"(pixcade assemble --set {name}.guidance_weight=W)"
            )
        _check_range(teacher, cfg)
        if cfg.guided_target == "thresholded" and parse_threshold(teacher.sampling.threshold) is None:
            raise PixcadeError(f"stage {name!r} samples without a threshold: distill.guided_target 'thresholded' "
                               "would be its plain output")
        return dataclasses.replace(teacher, unet=dataclasses.replace(teacher.unet, guidance_conditioned=True))
    # Halving a stage that guides with two passes distils its guidance and its steps at once,
    # at its own weight: the targets are its guided, thresholded DDIM steps, and the student
    # keeps that weight in its one pass (it is no longer an input, unlike phase 'guided').
    baked = teacher.sampling.guidance_weight if teacher.two_passes() else teacher.distilled_guidance
    if teacher.guidance_conditioned:
        _check_range(teacher, cfg)
    have, k = teacher.distilled_steps, cfg.factor
    if have is None:
        if cfg.steps is None:
            raise PixcadeError(f"stage {name!r} is not step-distilled: set distill.steps, the student's steps "
                               f"(the teacher takes {k} times as many)")
        steps = cfg.steps
    else:
        if have == 1:
            raise PixcadeError(f"stage {name!r} already samples in 1 step: it cannot be halved")
        dividing = "halving" if k == 2 else f"dividing by distill.factor {k}"
        if have % k:
            count = "an odd count" if k == 2 else f"not a multiple of {k}"
            raise PixcadeError(f"stage {name!r} was distilled for {have} steps, {count}: {dividing} cannot give "
                               "whole steps")
        steps = have // k if cfg.steps is None else cfg.steps
        if steps * k != have:
            raise PixcadeError(f"stage {name!r} takes {have} steps: {dividing} gives {have // k}, not {steps}")
    try:
        check_halving(teacher.parameterization, steps)
    except PixcadeError as err:
        raise PixcadeError(f"stage {name!r}: {err}") from None
    # The student's intermediate x0 is whatever makes its one DDIM step land on the
    # teacher's two: thresholding it would move the step off that target (the last x0,
    # the image, is clamped by Stage.sample as always).
    sampling = teacher.sampling.replace(sampler="ddim", steps=steps, threshold="none", spacing="uniform-t",
                                        guidance_weight=1.0 if baked is not None else teacher.sampling.guidance_weight)
    return dataclasses.replace(teacher, distilled_steps=steps, sampling=sampling, distilled_guidance=baked)


def _check_range(teacher: StageConfig, cfg: DistillConfig) -> None:
    low, high = cfg.guidance_range
    if not low <= teacher.sampling.guidance_weight <= high:
        raise PixcadeError(
            f"stage {teacher.name!r} samples at guidance weight {teacher.sampling.guidance_weight:g} by default, "
            f"outside distill.guidance_range [{low:g}, {high:g}]"
        )


def init_student(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Copy the teacher's weights into the student; the names of the student's tensors the
    teacher lacks (its guidance embedding), which keep their initialisation."""
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(not k.startswith("guidance_emb.") for k in missing):
        raise PixcadeError("the student's U-Net does not match its teacher's")  # student_config guarantees it
    return list(missing)


class Distillation:
    """The per-sample loss of one distillation phase, with the conditioning `Stage` assembles.

    Each sample draws its own noise level (continuous t for ``guided``, one of the
    student's grid points for ``halve``), SR augmentation level (uniform in [0, 1], as in
    training) and guidance weight (uniform in the config's range, when the student takes one).
    """

    def __init__(self, teacher: Stage, student: Stage, cfg: DistillConfig):
        if cfg.phase == "halve" and student.config.distilled_steps is None:
            raise PixcadeError("the halving student's config must come from student_config")
        self.teacher, self.student, self.cfg = teacher, student, cfg

    def loss(
        self,
        images: torch.Tensor,
        text_emb: torch.Tensor,
        text_mask: torch.Tensor,
        lowres: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        b, dev = images.shape[0], images.device
        res = images.shape[-1]
        w = None
        if self.student.config.guidance_conditioned:
            low, high = self.cfg.guidance_range
            w = low + (high - low) * torch.rand(b, generator=generator, device=dev)
        aug_t = aug_noise = None
        if self.student.config.is_super_resolution:
            aug_t = torch.rand(b, generator=generator, device=dev)
            # One draw for both networks: they must see the same noisy low-res image.
            aug_noise = torch.randn((b, 3, res, res), generator=generator, device=dev, dtype=images.dtype)

        def cond(stage: Stage, guidance: torch.Tensor | None) -> dict[str, torch.Tensor]:
            return stage.conditioning(text_emb, text_mask, lowres, aug_t, resolution=res, aug_noise=aug_noise,
                                      guidance=guidance)

        teacher = self.teacher
        student_cond = cond(self.student, w)

        def student(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.student.net(z, t, **student_cond)

        if self.cfg.phase == "guided":
            c = cond(teacher, None)
            guided = guided_output(teacher.net, c, unconditional(c), w)
            if self.cfg.guided_target == "thresholded":
                tc = teacher.config
                guided = thresholded_output(guided, teacher.schedule, tc.parameterization,
                                            parse_threshold(tc.sampling.threshold))
            return guided_distillation_loss(student, guided, images, teacher.schedule, generator=generator)
        # The halving teacher samples as it would by itself: w as an input (one pass), guided
        # with two passes at its own weight, or unguided; its own threshold.
        tc = teacher.config
        teacher_cond = cond(teacher, w if tc.guidance_conditioned else None)
        uncond, weight = (unconditional(teacher_cond), tc.sampling.guidance_weight) if tc.two_passes() else (None, 1.0)
        denoiser = guided_denoiser(teacher.net, teacher.schedule, tc.parameterization, teacher_cond, uncond, weight,
                                   tc.sampling.threshold)
        return halving_loss(student, denoiser, images, teacher.schedule, self.student.config.parameterization,
                            self.student.config.distilled_steps, factor=self.cfg.factor, generator=generator)
