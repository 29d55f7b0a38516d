"""Is a halving round limited by its targets' precision or by the student? For a batch of
training images, per student step: the v-space MSE between the two-step (or K-step) target
computed in fp32 and under bf16 autocast (as `pixcade distill` trains), and the student's own
error against the fp32 target, its forward in fp32 and in bf16.

    PYTHONPATH=. python scripts/distill_target_precision.py TEACHER_EXPORT STUDENT_EXPORT \\
        --data DATA_DIR [--stage base] [--guidance 6] [--factor 2] [--n 32]

Exports are run directories (RUN/final) or `CASCADE_DIR:STAGE`; DATA_DIR a folder of
NNNNNNNN.png + .txt caption pairs (a base stage: images resized to its resolution). The
student's step count is its `distilled_steps`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

from pixcade.data.transforms import resize_center_crop, to_tensor
from pixcade.diffusion.distillation import check_factor, halving_target
from pixcade.diffusion.guidance import guided_denoiser
from pixcade.diffusion.parameterization import per_sample, to_x0
from pixcade.diffusion.schedules import alpha_sigma
from pixcade.errors import PixcadeError
from pixcade.text.encoders import load_text_encoder
from pixcade.train.distill import load_teacher


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("teacher")
    p.add_argument("student")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--stage", default="base")
    p.add_argument("--guidance", type=float, default=6.0, help="w for w-conditioned networks")
    p.add_argument("--factor", type=int, default=2)
    p.add_argument("--n", type=int, default=32)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    try:
        check_factor(a.factor)
        if a.n < 1:
            raise PixcadeError(f"--n must be at least 1, got {a.n}")
        t_export, s_export = load_teacher(a.teacher, a.stage), load_teacher(a.student, a.stage)
        teacher, student = t_export.stage, s_export.stage
        steps = student.config.distilled_steps
        if steps is None or student.config.is_super_resolution:
            raise PixcadeError("the student must be a step-distilled base stage")
        res = student.config.resolution
        paths = sorted(a.data.glob("*.png"))[: a.n]
        if not paths:
            raise PixcadeError(f"no images in {a.data}")
        images = torch.stack([to_tensor(resize_center_crop(Image.open(q).convert("RGB"), res)) for q in paths])
        captions = [q.with_suffix(".txt").read_text().strip() for q in paths]
    except (OSError, PixcadeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    emb, mask = load_text_encoder(t_export.text_encoder, t_export.max_length).encode(captions)
    w = torch.full((len(paths),), a.guidance)

    def cond(stage):
        return stage.conditioning(emb, mask, guidance=w if stage.config.guidance_conditioned else None)

    tc = teacher.config
    denoiser = guided_denoiser(teacher.net, teacher.schedule, tc.parameterization, cond(teacher), None, 1.0,
                               tc.sampling.threshold)
    scond = cond(student)
    print("step  t      target bf16 vs fp32   student fp32   student bf16   (v-space MSE)")
    for i_val in sorted({1, 2, max(1, steps // 4), max(1, steps // 2), steps}):
        i = torch.full((len(paths),), i_val)
        log_snr = student.schedule.log_snr(i.double() / steps)
        alpha, sigma = (per_sample(c, images).float() for c in alpha_sigma(log_snr))
        z = alpha * images + sigma * torch.randn_like(images)
        exact = halving_target(denoiser, z, i, steps, teacher.schedule, a.factor)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rough = halving_target(denoiser, z, i, steps, teacher.schedule, a.factor).float()
        with torch.no_grad():
            t = i.float() / steps
            mine = to_x0(student.net(z, t, **scond).float(), z, alpha, sigma, student.config.parameterization)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                mine16 = to_x0(student.net(z, t, **scond).float(), z, alpha, sigma, student.config.parameterization)

        def v_mse(d: torch.Tensor) -> float:  # an x0 error is a v error divided by sigma
            return (d.square().flatten(1).mean(1) / sigma.flatten().square()).mean().item()

        print(f"{i_val:4d}  {i_val / steps:.3f}  {v_mse(rough - exact):.2e}             "
              f"{v_mse(mine - exact):.2e}       {v_mse(mine16 - exact):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
