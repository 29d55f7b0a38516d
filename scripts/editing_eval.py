"""Measure editing and half precision on a cascade (the shipped shapes model by default)
with the shapes scorer; the numbers in docs/editing.md come from this script.

- inpaint: a two-shape relation scene is rendered with its left shape left out, the left
  half is masked and the scene's caption asked for; an edit succeeds when the scorer
  passes the result against the whole scene and the right half is unchanged, byte for byte.
- recolour: a one-shape scene is rendered and edited at strength 0.5 with a caption that
  names another colour; it succeeds when the scorer passes the result against the
  recoloured scene.
- precision: the same prompts (evaluation_prompts) sampled in fp32 and in bf16: mean
  absolute pixel difference, scorer accuracy of each, McNemar's exact p on the pairs, time.

    PYTHONPATH=. python scripts/editing_eval.py --out results.json [--n 100] [--tasks inpaint,recolour,precision]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from pixcade.data.captions import caption
from pixcade.data.render import render
from pixcade.data.shapes import ALL_PAIRS, COLOURS, KINDS, MARGIN, SIZE_RANGES, Scene, Shape, evaluation_prompts
from pixcade.eval.paired import mcnemar_p
from pixcade.eval.shapes import judge
from pixcade.io import atomic_write_text
from pixcade.pipeline.cascade import Cascade
from pixcade.pipeline.edits import EditRequest

GAP = 0.03  # each shape stays this far from the middle line


def _shape(
    rng: np.random.Generator, pair: tuple[str, str], x_range: tuple[float, float], y: float | None = None
) -> Shape:
    """A shape of random size inside x_range, at height ``y`` (random when None) kept inside."""
    size = str(rng.choice(list(SIZE_RANGES)))
    s = float(rng.uniform(*SIZE_RANGES[size]))
    lo, hi = x_range[0] + s / 2, x_range[1] - s / 2
    y_lo, y_hi = MARGIN + s / 2, 1 - MARGIN - s / 2
    cy = float(rng.uniform(y_lo, y_hi)) if y is None else float(np.clip(y, y_lo, y_hi))
    return Shape(pair[0], pair[1], size, float(rng.uniform(lo, hi)), cy, s)


def inpaint_cases(n: int, seed: int = 0) -> list[tuple[Scene, Shape]]:
    """(whole scene, the right-hand shape drawn alone): the left shape is to be inpainted.
    Half the captions name the left shape first ("A to the left of B"), half the right."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        a, b = (ALL_PAIRS[j] for j in rng.choice(len(ALL_PAIRS), 2, replace=False))
        # Heights within 0.1 of each other: the pair reads as side by side (the scorer's
        # relation needs the horizontal offset to be the larger one).
        y = float(rng.uniform(0.3, 0.7))
        left = _shape(rng, a, (MARGIN, 0.5 - GAP), y + float(rng.uniform(-0.05, 0.05)))
        right = _shape(rng, b, (0.5 + GAP, 1 - MARGIN), y + float(rng.uniform(-0.05, 0.05)))
        shapes, relation = ((left, right), "left") if i % 2 == 0 else ((right, left), "right")
        scene = Scene("relation", shapes, relation=relation)
        cases.append((replace(scene, caption=caption(scene)), right))
    return cases


def recolour_cases(n: int, seed: int = 1) -> list[tuple[Shape, Scene]]:
    """(the shape drawn, the scene asked for: the same shape in another colour)."""
    rng = np.random.default_rng(seed)
    colours = list(COLOURS)
    cases = []
    for _ in range(n):
        kind = str(rng.choice(KINDS))
        old, new = (colours[j] for j in rng.choice(len(colours), 2, replace=False))
        shape = _shape(rng, (old, kind), (MARGIN, 1 - MARGIN))
        scene = Scene("single", (replace(shape, colour=new),))
        cases.append((shape, replace(scene, caption=caption(scene))))
    return cases


def run_inpaint(cascade: Cascade, n: int, resolution: int, batch: int, save=lambda partial: None) -> dict:
    cases = inpaint_cases(n)
    mask = np.zeros((resolution, resolution), dtype=np.uint8)
    mask[:, : resolution // 2] = 255
    mask_im = Image.fromarray(mask)
    ok = kept = 0
    results = []
    t0 = time.perf_counter()
    for k in range(0, n, batch):
        chunk = cases[k: k + batch]
        inputs = [render([right], resolution) for _, right in chunk]
        outs = cascade.generate([sc.caption for sc, _ in chunk], image=inputs, mask=mask_im,
                                batch_size=batch, progress=False)
        for (scene, _), src, out in zip(chunk, inputs, outs):
            same = bool(np.array_equal(np.asarray(out)[:, resolution // 2:], np.asarray(src)[:, resolution // 2:]))
            verdict = judge(out, scene)
            kept += same
            ok += verdict.passed and same
            results.append({"caption": scene.caption, "passed": verdict.passed, "kept": same, "why": verdict.reason})
        done = len(results)
        report = {"n": done, "succeeded": ok, "rate": ok / done, "right_half_unchanged": kept,
                  "seconds": time.perf_counter() - t0, "results": results}
        save(report)
    return report


def run_recolour(cascade: Cascade, n: int, resolution: int, batch: int, strength: float,
                 save=lambda partial: None) -> dict:
    cases = recolour_cases(n)
    ok = 0
    results = []
    t0 = time.perf_counter()
    for k in range(0, n, batch):
        chunk = cases[k: k + batch]
        outs = cascade.generate([sc.caption for _, sc in chunk], image=[render([sh], resolution) for sh, _ in chunk],
                                edit=EditRequest(strength=strength), batch_size=batch, progress=False)
        for (shape, scene), out in zip(chunk, outs):
            verdict = judge(out, scene)
            ok += verdict.passed
            results.append({"from": shape.colour, "caption": scene.caption, "passed": verdict.passed,
                            "why": verdict.reason})
        done = len(results)
        report = {"n": done, "strength": strength, "succeeded": ok, "rate": ok / done,
                  "seconds": time.perf_counter() - t0, "results": results}
        save(report)
    return report


def run_precision(cascade: Cascade, n: int, batch: int) -> dict:
    scenes = evaluation_prompts(n)
    prompts = [sc.caption for sc in scenes]
    images, seconds, passed = {}, {}, {}
    for dtype in ("fp32", "bf16"):
        t0 = time.perf_counter()
        images[dtype] = cascade.generate(prompts, dtype=dtype, batch_size=batch, progress=False)
        seconds[dtype] = time.perf_counter() - t0
        passed[dtype] = [judge(im, sc).passed for im, sc in zip(images[dtype], scenes)]
    diff = [np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean()
            for a, b in zip(images["fp32"], images["bf16"])]
    only32 = sum(a and not b for a, b in zip(passed["fp32"], passed["bf16"]))
    only16 = sum(b and not a for a, b in zip(passed["fp32"], passed["bf16"]))
    return {
        "n": n, "mean_abs_pixel_diff": float(np.mean(diff)), "max_image_mean_diff": float(np.max(diff)),
        "accuracy": {k: sum(v) / n for k, v in passed.items()}, "seconds": seconds,
        "only_fp32_passed": only32, "only_bf16_passed": only16, "mcnemar_p": mcnemar_p(only32, only16),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="cascade directory (default: the shipped shapes model)")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--strength", type=float, default=0.5)
    p.add_argument("--tasks", default="inpaint,recolour,precision")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    cascade = Cascade.from_pretrained(args.model or "shapes")
    resolution = cascade.stages[-1].config.resolution
    report: dict = {"model": str(args.model or "shipped shapes model")}
    for task in args.tasks.split(","):
        def save(partial: dict, task: str = task) -> None:  # after every batch: a cut run keeps its numbers
            report[task] = partial
            atomic_write_text(Path(args.out), json.dumps(report, indent=1) + "\n")

        if task == "inpaint":
            report[task] = run_inpaint(cascade, args.n, resolution, args.batch, save)
        elif task == "recolour":
            report[task] = run_recolour(cascade, args.n, resolution, args.batch, args.strength, save)
        elif task == "precision":
            report[task] = run_precision(cascade, args.n, args.batch)
        else:
            p.error(f"unknown task {task!r}")
        summary = {k: v for k, v in report[task].items() if k != "results"}
        print(task, json.dumps(summary), flush=True)
        atomic_write_text(Path(args.out), json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
