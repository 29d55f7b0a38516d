"""What a distillation step costs against a training step, on a saved cascade's stage.

    python benchmarks/distill_cost.py --model pixcade/weights/shapes --stage base [--json FILE]

Times the forward and backward pass of one micro-batch for the stage's diffusion loss
(`pixcade train`), the guided phase and a halving round (`pixcade distill`), interleaved,
and prints the medians and their ratios to training. The networks are the stage's own
(the students start from its weights, which costs the same as trained ones), so the
numbers are the real per-step cost; what to multiply them by is in docs/training.md.
Inputs are random: the cost does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from pixcade.diffusion.precision import check_dtype
from pixcade.io import atomic_write_text
from pixcade.stage import Stage
from pixcade.train.config import DistillConfig
from pixcade.train.distill import Distillation, init_student, load_teacher, student_config


def _student(teacher: Stage, cfg: DistillConfig) -> Distillation:
    student = Stage(student_config(teacher.config, cfg))
    init_student(student.net, teacher.net)
    student.net.to(next(teacher.net.parameters()).device).train()
    return Distillation(teacher, student, cfg)


def measure(model: str, stage: str, batch: int, repeats: int, bf16: bool, device: str) -> dict:
    teacher = load_teacher(model, stage, device).stage
    c = teacher.config
    w = c.sampling.guidance_weight
    losses = {}
    plain = Stage(c)
    plain.net.load_state_dict(teacher.net.state_dict())
    plain.net.to(device).train()
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, 3, c.train_crop or c.resolution, c.train_crop or c.resolution, device=device) * 2 - 1
    emb = torch.randn(batch, 8, c.unet.text_dim, device=device)
    mask = torch.ones(batch, 8, dtype=torch.bool, device=device)
    lowres = None
    if c.is_super_resolution:
        side = (c.train_crop or c.resolution) * c.lowres_resolution // c.resolution
        lowres = torch.rand(batch, 3, side, side, device=device) * 2 - 1
    losses["train"] = lambda: plain.loss(x, emb, mask, lowres, cond_drop_prob=0.1, generator=g)
    halve_teacher = teacher
    if w != 1.0:  # guided: the guided phase, and halving its student (w-conditioned, one pass)
        guided = _student(teacher, DistillConfig(teacher="-", phase="guided"))
        losses["guided"] = lambda: guided.loss(x, emb, mask, lowres, generator=g)
        halve_teacher = guided.student
    halve_cfg = DistillConfig(teacher="-", phase="halve", steps=8)
    halving = _student(halve_teacher, halve_cfg)
    losses["halve"] = lambda: halving.loss(x, emb, mask, lowres, generator=g)
    times: dict[str, list[float]] = {k: [] for k in losses}
    for r in range(repeats + 1):  # the first round warms up and is dropped
        for name, loss in losses.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                value = loss().float().mean()
            value.backward()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if r:
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": model, "stage": stage, "batch": batch, "repeats": repeats, "bf16": bf16, "device": device,
            "threads": torch.get_num_threads(), "seconds_per_step": med,
            "ratio_to_training": {k: v / med["train"] for k, v in med.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="saved cascade directory")
    p.add_argument("--stage", required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="training precision, as train.bf16 (default auto, the trainer's: bf16 autocast where "
                        "the device computes bf16 natively, else fp32)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    bf16 = check_dtype(a.precision, a.device) == torch.bfloat16  # "auto" resolved as the trainer does
    result = measure(a.model, a.stage, a.batch, a.repeats, bf16, a.device)
    text = json.dumps(result, indent=1)
    print(text)
    if a.json:
        atomic_write_text(Path(a.json), text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
