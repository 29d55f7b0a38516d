"""Super-resolution quality on the shapes domain: PSNR against the true render.

A shapes scene can be rendered exactly at any resolution, so an SR stage can be judged
on its own: give it the true low-res render (and the caption), and compare its output
with the true render at its own resolution. Bicubic upsampling of the same low-res
render is the baseline an SR stage has to beat.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from pixcade.data.render import render
from pixcade.data.shapes import Scene
from pixcade.diffusion.precision import dtype_name
from pixcade.errors import PixcadeError
from pixcade.io import atomic_write_text
from pixcade.pipeline.images import make_grid


def psnr(image: Image.Image, reference: Image.Image) -> float:
    """PSNR in dB of an RGB uint8 image against a reference of the same size.

    Identical images would be infinite: their MSE is taken as that of a single channel of
    a single pixel off by one, the smallest non-zero error two uint8 images can have, so
    a perfect output scores the highest finite value any output can.
    """
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    b = np.asarray(reference.convert("RGB"), dtype=np.float64)
    if a.shape != b.shape:
        raise PixcadeError(f"PSNR needs images of one size, got {a.shape[1]}x{a.shape[0]} and {b.shape[1]}x{b.shape[0]}")
    mse = max(float(np.mean((a - b) ** 2)), 1.0 / a.size)
    return 10.0 * math.log10(255.0**2 / mse)


def bicubic(image: Image.Image, resolution: int) -> Image.Image:
    return image.convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC)


def sr_stage_name(cascade: Any, stage: str | None) -> str:
    """``stage`` checked to be a super-resolution stage; by default the cascade's last one."""
    if stage is None:
        sr = [s.config.name for s in cascade.stages if s.config.is_super_resolution]
        if not sr:
            raise PixcadeError("the cascade has no super-resolution stage")
        return sr[-1]
    if not cascade.stage(stage).config.is_super_resolution:
        raise PixcadeError(f"stage {stage!r} is not a super-resolution stage")
    return stage


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    sr, bi = _mean([r["psnr_sr"] for r in rows]), _mean([r["psnr_bicubic"] for r in rows])
    return {"n": len(rows), "psnr_sr": sr, "psnr_bicubic": bi,
            "gain_db": None if sr is None else sr - bi,
            "sr_beats_bicubic": sum(r["psnr_sr"] > r["psnr_bicubic"] for r in rows)}


def evaluate_sr(
    cascade: Any,
    scenes: Sequence[Scene],
    stage: str | None = None,
    *,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
    dtype: str | None = None,
) -> tuple[dict[str, Any], dict[str, list[Image.Image]]]:
    """Mean PSNR of the SR stage's outputs and of bicubic upsampling, over ``scenes``.

    Returns the report (JSON-able: means overall and for seen vs held-out pairs, and every
    image's two PSNRs) and the images: ``lowres``, ``bicubic``, ``sr``, ``truth``.
    The stage samples with its saved defaults (steps, guidance, noise augmentation), in
    ``dtype`` when given (`SamplingSettings.dtype`: auto, fp32, bf16, fp16).
    """
    if not scenes:
        raise PixcadeError("no scenes to evaluate")
    name = sr_stage_name(cascade, stage)
    config = cascade.stage(name).config
    lows = [render(s, config.lowres_resolution) for s in scenes]
    truths = [render(s, config.resolution) for s in scenes]
    outs = cascade.generate([s.caption for s in scenes], seed=seed, stages=[name], start_image=lows,
                            batch_size=batch_size, progress=progress, **({"dtype": {name: dtype}} if dtype else {}))
    bics = [bicubic(im, config.resolution) for im in lows]
    rows = [
        {"index": i, "caption": s.caption, "held_out": s.held_out,
         "psnr_sr": psnr(out, truth), "psnr_bicubic": psnr(bic, truth)}
        for i, (s, out, bic, truth) in enumerate(zip(scenes, outs, bics, truths))
    ]
    report = {
        "stage": name,
        "lowres_resolution": config.lowres_resolution,
        "resolution": config.resolution,
        "seed": seed,
        "precision": dtype_name(config.sampling.dtype if dtype is None else dtype, cascade.device),
        "psnr_cap_db": psnr(truths[0], truths[0]),
        **_summary(rows),
        "seen": _summary([r for r in rows if not r["held_out"]]),
        "held_out": _summary([r for r in rows if r["held_out"]]),
        "results": rows,
    }
    return report, {"lowres": lows, "bicubic": bics, "sr": outs, "truth": truths}


def markdown_table(report: dict[str, Any]) -> str:
    def row(label: str, t: dict[str, Any]) -> str:
        if not t["n"]:
            return f"| {label} | 0 | - | - | - | - |"
        return (f"| {label} | {t['n']} | {t['psnr_bicubic']:.2f} | {t['psnr_sr']:.2f} | "
                f"{t['gain_db']:+.2f} | {t['sr_beats_bicubic']}/{t['n']} |")

    size = f"{report['lowres_resolution']} -> {report['resolution']} px"
    lines = [f"| prompts ({size}) | n | bicubic PSNR (dB) | SR PSNR (dB) | SR - bicubic (dB) | SR better |",
             "| --- | ---: | ---: | ---: | ---: | ---: |",
             row("seen pairs", report["seen"]), row("held-out pairs", report["held_out"]),
             row("**all**", report)]
    return "\n".join(lines)


def examples_grid(images: dict[str, list[Image.Image]], count: int = 8) -> Image.Image:
    """Rows of (low-res enlarged, bicubic, SR output, truth) for the first ``count`` scenes."""
    side = images["truth"][0].size[0]
    rows = [
        [images["lowres"][i].resize((side, side), Image.Resampling.NEAREST), images["bicubic"][i],
         images["sr"][i], images["truth"][i]]
        for i in range(min(count, len(images["truth"])))
    ]
    return make_grid(rows)


def write_sr_report(out: str | Path, report: dict[str, Any], images: dict[str, list[Image.Image]]) -> str:
    """``out``/examples.png and sr_psnr.md for an `evaluate_sr` report; the markdown table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    examples_grid(images).save(out / "examples.png")
    table = markdown_table(report)
    atomic_write_text(out / "sr_psnr.md",
                      f"# Super-resolution PSNR: {report['model']}, stage {report['stage']}\n\n{table}\n\n"
                      "examples.png rows: low-res input (enlarged), bicubic, SR output, true render\n")
    return table
