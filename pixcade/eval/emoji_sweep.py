"""A grid of sampling settings judged on the emoji domain's held-out prompts
(`pixcade eval emoji sweep`).

Two of issue 28's comparisons are such grids: guidance weight x thresholding on the base
stage (``--vary base.guidance_weight=1,3,5,8 --vary base.threshold=static,dynamic``, on
val_cs), and the noise-conditioning augmentation ablation (``--vary sr.aug_level=0,0.1``,
whole cascade). Each cell is a `pixcade generate` output folder (so an interrupted sweep
resumes where it stopped, and the images are there to look at), drawn from the same seed
(the cells differ only in their settings), then every cell is judged by every judge at
once: accuracies beside the ceiling, FD and KID, near-copies, and whether the judges rank
the cells alike. With no axis the grid is one cell, ``defaults``: the model judged as it
samples (the model card's test_cs and test_attr results).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TypeVar

from PIL import Image

from pixcade.data.emoji.spec import SPLITS
from pixcade.diffusion.precision import stage_precisions
from pixcade.errors import PixcadeError
from pixcade.eval import emoji
from pixcade.eval.emoji_classifier import EmojiClassifier, LabelledImages
from pixcade.eval.fid import image_index
from pixcade.eval.stage_grid import labelled_grid, write_grid
from pixcade.eval.sweep import Assignment, Axis, Cell, cell_label, cell_settings, cell_title, cells
from pixcade.io import atomic_write_text
from pixcade.pipeline.cascade import Cascade
from pixcade.pipeline.folder import write_images
from pixcade.pipeline.images import open_image
from pixcade.pipeline.plan import Plan, choose
from pixcade.pipeline.request import Request

T = TypeVar("T")


def spread(items: Sequence[T], limit: int | None) -> list[T]:
    """``limit`` of ``items`` evenly spaced over them (all when None or at least as many): the
    manifests are in style order, so the first N would be one style."""
    if limit is not None and limit < 1:
        raise PixcadeError(f"--limit must be at least 1, got {limit}")
    if limit is None or limit >= len(items):
        return list(items)
    return [items[i * len(items) // limit] for i in range(limit)]


# `--split train`: prompts of training images, judged against those images. It measures fit,
# not generalisation (the judges were trained on these images as well); a base stage that
# cannot draw the concepts it trained on will not draw them in a style it never saw them in,
# and counts over hundreds of training prompts move where the held-out ones stay at a few.
TRAIN = "train"


def check_split(split: str) -> None:
    if split != "all" and split not in SPLITS:
        raise PixcadeError(f"unknown split {split!r} (choose from all, {', '.join(SPLITS)})")


def split_prompts(held_out: LabelledImages, split: str, limit: int | None = None) -> list[str]:
    """The prompts of the held-out images of ``split`` (``all``: every split), in manifest
    order, or ``limit`` of them spread over it (`spread`)."""
    check_split(split)
    prompts = [c for c, row in zip(held_out.captions, held_out.extra) if split == "all" or row.get("split") == split]
    return spread(list(dict.fromkeys(prompts)), limit)


@dataclass(frozen=True)
class SweepRun:
    """What every cell of a sweep shares; the report records it."""

    model: str  # the cascade folder, as given
    model_digest: str | None
    prompts: list[str]  # held-out prompts, each drawn `n` times per cell
    n: int
    seed: int  # every cell draws from the same seed: the cells differ only in their settings
    batch_size: int
    stages: list[str] | None  # the stages to run (None: all); the judge reads the last one's images
    fixed: tuple[Assignment, ...] = ()  # `--set` assignments of every cell


def plan_cells(cascade: Cascade, run: SweepRun, grid: Sequence[Cell]) -> list[Plan]:
    """Each cell's plan: the stages run and their settings, every cell checked before any image."""
    chosen = choose(cascade.stages, run.stages)
    configs = [s.config for s in chosen]
    plans = []
    for cell in grid:
        plan = Plan(chosen, cell_settings(configs, cell, run.fixed))
        cascade.check_precision(plan)
        plans.append(plan)
    return plans


def generate_cells(cascade: Cascade, run: SweepRun, grid: Sequence[Cell], out: Path
                   ) -> dict[str, list[tuple[Any, str]]]:
    """Draw every cell into ``out``/LABEL/ (resuming what is there); {label: [(image, prompt)]}."""
    plans = plan_cells(cascade, run, grid)
    request = Request.build(run.prompts)
    sets = {}
    for cell, plan in zip(grid, plans):
        label = cell_label(cell)
        record = {"model": str(Path(run.model).resolve()), "model_digest": run.model_digest, "seed": run.seed,
                  "n": run.n, "batch_size": run.batch_size, "cell": [list(a) for a in cell],
                  "options": {name: s.to_dict() for name, s in plan.settings.items()},
                  "precision": stage_precisions(plan.settings, cascade.device)}
        print(f"cell {label}", file=sys.stderr)
        write_images(cascade, plan, request, out / label, n=run.n, seed=run.seed, batch_size=run.batch_size,
                     save_stages=True, rank=0, world=1, record=record)
        sets[label] = [(open_image(path), prompt) for path, prompt in image_index(out / label) or []]
    return sets


GRID_PROMPTS = 8  # rows of the comparison picture, spread over the split
GRID_CELL = 160  # its images' side: small stages enlarged so the differences show


def comparison_grid(sets: dict[str, list[tuple[Any, str]]], titles: Sequence[str]) -> Image.Image:
    """One row per prompt (`GRID_PROMPTS` of them, spread), one column per cell (headed by
    ``titles``): the images the sweep judged, side by side ("with images")."""
    labels = list(sets)
    rows = spread(range(len(sets[labels[0]])), GRID_PROMPTS)
    columns = {title: [sets[label][i][0] for i in rows] for title, label in zip(titles, labels)}
    side = max(GRID_CELL, max(sets[labels[0]][0][0].size))
    return labelled_grid([sets[labels[0]][i][1] for i in rows], columns, side, mark_final=False)


def summary_rows(result: dict[str, Any], grid: Sequence[Cell], split: str) -> list[dict[str, Any]]:
    """One row per (cell, judge): the swept values, the split's accuracies, FD, KID."""
    rows = []
    for cell in grid:
        label = cell_label(cell)
        for judge, report in result["judges"].items():
            judged = report["models"][label]
            acc = judged["accuracy"]["all" if split == TRAIN else split]
            rows.append({"cell": label, "values": [v for _, _, v in cell], "judge": judge,
                         "generated": acc["generated"], "ceiling": acc["ceiling"], **judged["distance"],
                         "copies_of_another_style": result["near_copies"][label]["generated"]["of_another_style"]})
    return rows


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def markdown_table(rows: Sequence[dict[str, Any]], axes: Sequence[Axis], split: str) -> str:
    """The summary rows as a table, with the ceiling of each judge on the split's real images."""
    head = [a.name for a in axes] + ["judge", "style", "family", "joint", "FD", "KID", "copies (other style)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    ceilings = {}
    for r in rows:
        g = r["generated"]
        ceilings[r["judge"]] = r["ceiling"]
        lines.append("| " + " | ".join([*r["values"], Path(r["judge"]).stem, _num(g["style"]), _num(g["family"]),
                                        _num(g["joint"]), _num(r["fd"], ".2f"), _num(r["kid"], ".4f"),
                                        str(r["copies_of_another_style"])]) + " |")
    for judge, c in ceilings.items():
        lines.append("| " + " | ".join(["real images"] * len(axes) + [Path(judge).stem, _num(c["style"]),
                                        _num(c["family"]), _num(c["joint"]), "0", "-", "-"]) + " |")
    per_cell = rows[0]["generated"]["n"] if rows else 0
    what = ("Training prompts (fit, not generalisation: the judges were trained on these real images too)"
            if split == TRAIN else f"Held-out split `{split}`")
    return f"{what}, {per_cell} images per cell.\n\n" + "\n".join(lines)


def right_by_every_judge(result: dict[str, Any], label: str) -> list[str]:
    """The prompts of the cell's images that every judge reads as the right family and style."""
    per_judge = [r["models"][label]["per_image"] for r in result["judges"].values()]
    return [images[0]["prompt"] for images in zip(*per_judge)
            if all(x["style_right"] and x["family_right"] for x in images)]


def right_list(result: dict[str, Any], grid: Sequence[Cell]) -> str:
    """Markdown: per cell, the images every judge gets right (as steps rise, whether the same
    concepts are learnt shows here, not in the means)."""
    lines = ["Images every judge reads as the right family and style:", ""]
    for cell in grid:
        right = right_by_every_judge(result, cell_label(cell))
        lines.append(f"- {cell_title(cell)} ({len(right)}): " + ("; ".join(right) or "none"))
    return "\n".join(lines)


def run_sweep(cascade: Cascade, run: SweepRun, axes: Sequence[Axis], out: Path, *, split: str,
              judges: dict[str, tuple[EmojiClassifier, dict[str, Any]]], held_out: LabelledImages,
              train: LabelledImages, copy_psnr: float, command: str) -> dict[str, Any]:
    """Generate and judge every cell; write sweep.json and sweep.md into ``out``; the report."""
    grid = cells(axes)
    sets = generate_cells(cascade, run, grid, out)
    write_grid(comparison_grid(sets, [cell_title(c) for c in grid]), out / "grid.png", command=command,
               model_digest=run.model_digest)
    result = emoji.judge_generated_sets(judges, held_out, train, sets, copy_psnr=copy_psnr)
    rows = summary_rows(result, grid, split)
    report = {"command": command, "model": run.model, "model_digest": run.model_digest, "split": split,
              "prompts": len(run.prompts), "n": run.n, "seed": run.seed, "stages": run.stages,
              "fixed": [list(a) for a in run.fixed], "axes": [{"name": a.name, "values": list(a.values)} for a in axes],
              "summary": rows, **result}
    table = markdown_table(rows, axes, split)
    atomic_write_text(out / "sweep.md", f"# Emoji sweep: {run.model}\n\n`{command}`\n\n{table}\n\n"
                                        f"{right_list(result, grid)}\n")
    atomic_write_text(out / "sweep.json", json.dumps(report, indent=2) + "\n")
    print(table, file=sys.stderr)
    return report
