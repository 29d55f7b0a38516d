"""The shapes benchmark of a cascade (`pixcade eval shapes`): generate the evaluation
prompts' images, save them, score them with `pixcade.eval.shapes`; and its sweep over
guidance weights and thresholds on one stage, one such run per setting."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from pixcade.data.scenes import Scene
from pixcade.diffusion.precision import stage_precisions
from pixcade.errors import PixcadeError
from pixcade.eval.shapes import markdown_table, score
from pixcade.eval.sweep import Axis, cell_label, cell_settings, cells
from pixcade.io import atomic_write_text
from pixcade.pipeline.cascade import Cascade
from pixcade.pipeline.images import save_png_atomic
from pixcade.pipeline.options import resolve


@dataclass(frozen=True)
class BenchmarkRun:
    """What every run of a benchmark (or of a sweep) shares; reports record it."""

    model: str  # the cascade directory, as given
    model_digest: str | None  # `provenance.model_digest` of it, hashed once for every run of a sweep
    scenes: list[Scene]  # the evaluation prompts
    images_per_prompt: int
    seed: int  # sampling seed
    prompt_seed: int  # the prompt set's seed
    batch_size: int  # images per batch (an image does not depend on it)
    options: dict[str, Any] = field(default_factory=dict)  # `Cascade.generate` options of every run


def run_benchmark(cascade: Cascade, run: BenchmarkRun, out: Path, options: dict[str, Any] | None = None) -> dict:
    """Generate, save and score one benchmark run into ``out`` (images/, shapes.md) with
    `Cascade.generate` ``options`` over ``run.options``; the report, which records the
    precision each stage ran in (``auto`` depends on the machine)."""
    scenes, k = run.scenes, run.images_per_prompt
    options = {**run.options, **(options or {})}
    settings = resolve([s.config for s in cascade.stages], **options)
    images = cascade.generate([s.caption for s in scenes], n=k, seed=run.seed, batch_size=run.batch_size,
                              **options)
    (out / "images").mkdir(parents=True, exist_ok=True)
    names = [f"{i // k:04d}_{i % k}.png" for i in range(len(images))]
    for name, im in zip(tqdm(names, desc="save images", unit="img"), images):
        save_png_atomic(im, out / "images" / name)
    report = score(images, [s for s in scenes for _ in range(k)])
    for r in report["results"]:
        r["image"] = f"images/{names[r['index']]}"
    side = min(images[0].size)
    report = {"model": run.model, "model_digest": run.model_digest, "resolution": side,
              "prompts": len(scenes), "images_per_prompt": k,
              "prompt_seed": run.prompt_seed, "seed": run.seed,
              "precision": stage_precisions(settings, cascade.device), **report}
    if options:
        report["options"] = options
    if side < 128:
        # The spec: at 32-64 px even a true rendering of a small star is not always recognised.
        report["note"] = f"images are {side}px; the scorer is only reliable at 128px or more"
        print(f"warning: {report['note']}", file=sys.stderr)
    table = markdown_table(report)
    atomic_write_text(out / "shapes.md", f"# Shapes benchmark: {run.model}\n\n{table}\n")
    print(table, file=sys.stderr)
    return report


def _acc(t: dict[str, Any]) -> str:
    return "-" if t["accuracy"] is None else f"{t['accuracy']:.3f}"


def sweep_table(rows: Sequence[dict[str, Any]], stage: str) -> str:
    """Rows: guidance weights; columns: overall and held-out accuracy per threshold."""
    thresholds = list(dict.fromkeys(r["threshold"] for r in rows))
    weights = list(dict.fromkeys(r["guidance_weight"] for r in rows))
    cell = {(r["guidance_weight"], r["threshold"]): r for r in rows}
    head = [f"guidance ({stage})"]
    for t in thresholds:
        head += [f"{t}: overall", f"{t}: held-out"]
    lines = ["| " + " | ".join(head) + " |", "| ---: |" + " ---: |" * (2 * len(thresholds))]
    for w in weights:
        parts = [f"{w:g}"]
        for t in thresholds:
            r = cell.get((w, t))
            parts += [_acc(r["overall"]), _acc(r["held_out"])] if r else ["-", "-"]
        lines.append("| " + " | ".join(parts) + " |")
    return "\n".join(lines)


def run_sweep(cascade: Cascade, run: BenchmarkRun, out: Path, axes: Sequence[Axis], command: str) -> dict:
    """One `run_benchmark` per cell of ``axes`` (guidance weight and/or threshold of one stage;
    the other settings and stages as saved) into ``out``/CELL/; sweep.md and the result, one
    row per cell with the swept stage's effective guidance weight and threshold. Every cell is
    checked before the first image."""
    stages = {a.stage for a in axes}
    if len(stages) != 1 or None in stages or not {a.key for a in axes} <= {"guidance_weight", "threshold"}:
        raise PixcadeError("the shapes sweep varies the guidance weight and/or threshold of one stage")
    stage = cascade.stage(stages.pop()).config.name
    configs = [s.config for s in cascade.stages]
    grid = cells(axes)
    planned = []
    for cell in grid:
        settings = cell_settings(configs, cell)
        # Only the swept settings, as `Cascade.generate` options, so the run's own (--dtype) stay.
        options = {key: {stage: getattr(settings[stage], key)} for _, key, _ in cell}
        resolve(configs, **{**run.options, **options})
        planned.append((cell, settings[stage], options))
    rows = []
    for cell, eff, options in planned:
        print(f"guidance {eff.guidance_weight:g}, threshold {eff.threshold} on stage {stage}", file=sys.stderr)
        label = cell_label(cell)
        report = run_benchmark(cascade, run, out / label, options)
        atomic_write_text(out / label / "shapes.json", json.dumps(report, indent=2) + "\n")
        rows.append({"guidance_weight": eff.guidance_weight, "threshold": eff.threshold, "dir": label,
                     **{k: report[k] for k in ("overall", "seen", "held_out", "by_kind")}})
    table = sweep_table(rows, stage)
    atomic_write_text(out / "sweep.md",
                      f"# Shapes benchmark, guidance x thresholding: {run.model}\n\nAccuracy on {len(run.scenes)} "
                      "prompts (held-out: prompts naming a held-out colour-shape pair); other stages at their "
                      f"defaults.\n\n{table}\n")
    print(table, file=sys.stderr)
    return {"model": run.model, "model_digest": run.model_digest, "command": command, "stage": stage,
            "resolution": report["resolution"], "prompts": len(run.scenes),
            "images_per_prompt": run.images_per_prompt, "prompt_seed": run.prompt_seed, "seed": run.seed,
            "rows": rows}
