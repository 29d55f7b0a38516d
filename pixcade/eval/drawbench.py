"""DrawBench side-by-side human evaluation, as in Imagen (`pixcade drawbench`, eval/drawbench_cli.py).

    pixcade drawbench generate --prompts ../shared/drawbench.csv --model A --model B --n 4 --out DIR
    pixcade drawbench rate --dir DIR [--db DIR/votes.sqlite] [--host 127.0.0.1 --port 8000]
    pixcade drawbench report --dir DIR [--db ...]

``generate`` writes, under DIR, ``manifest.json`` (models, prompts with categories, n)
and per model a folder ``model-<i>/`` of ``<prompt index:04d>_<k>.png`` images plus a
``prompts.jsonl`` (image, prompt) that ``pixcade eval clip-score --prompts`` reads. It
resumes: prompts whose images all exist are skipped. ``rate`` serves the blind rating
page; ``report`` writes ``report.json`` and ``report.md`` and prints the JSON.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tqdm import tqdm

from pixcade.errors import PixcadeError
from pixcade.eval.drawbench_votes import VoteStore, build_report, report_markdown
from pixcade.io import atomic_write_text
from pixcade.limits import check_limit

MANIFEST = "manifest.json"


def read_prompts(path: str | Path, categories: list[str] | None = None) -> list[dict]:
    """DrawBench's CSV (columns Prompt, Category) -> [{"index", "prompt", "category"}]."""
    path = Path(path)
    if not path.is_file():
        raise PixcadeError(f"prompts file not found: {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"Prompt", "Category"} <= set(reader.fieldnames):
            raise PixcadeError(f"{path}: expected a CSV with columns Prompt,Category")
        rows = [(r["Prompt"].strip(), r["Category"].strip()) for r in reader if (r["Prompt"] or "").strip()]
    if categories:
        unknown = set(categories) - {c for _, c in rows}
        if unknown:
            raise PixcadeError(f"{path}: no prompts in categories {sorted(unknown)}")
        rows = [r for r in rows if r[1] in categories]
    if not rows:
        raise PixcadeError(f"{path}: no prompts")
    return [{"index": i, "prompt": p, "category": c} for i, (p, c) in enumerate(rows)]


def load_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise PixcadeError(f"{directory} has no {MANIFEST}: make it with `pixcade drawbench generate`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if len(manifest["models"]) < 2 or not manifest["prompts"] or int(manifest["n"]) < 1:
            raise ValueError("needs two models, prompts and n")
    except (ValueError, KeyError, TypeError) as err:
        raise PixcadeError(f"{path} is not a DrawBench manifest: {err}") from None
    return manifest


def generate(prompts: list[dict], models: list[str], n: int, out: str | Path, seed: int = 0,
             device: str = "cpu", batch_size: int | None = None) -> dict:
    """``n`` images per prompt per model (each a saved cascade directory) under ``out``."""
    # Here: the pipeline imports torch (~4 s), which `drawbench rate` and `report` never need.
    from pixcade.pipeline.cascade import Cascade
    from pixcade.pipeline.images import save_png_atomic

    if len(models) < 2 or len(set(models)) != len(models):
        raise PixcadeError("give at least two different --model")
    if n < 1:
        raise PixcadeError(f"--n must be >= 1, got {n}")
    check_limit("images", n * len(prompts) * len(models), f"--n {n} x {len(prompts)} prompts x {len(models)} models")
    if batch_size is not None:
        check_limit("batch", batch_size, "--batch-size")
    out = Path(out)
    manifest = {
        "n": n, "seed": seed,
        "models": [{"name": m, "dir": f"model-{i}"} for i, m in enumerate(models)],
        "prompts": prompts,
    }
    if (out / MANIFEST).is_file():
        old = load_manifest(out)
        if (old["models"], old["prompts"], old["n"], old.get("seed")) != (
                manifest["models"], prompts, n, seed):
            raise PixcadeError(f"{out} holds a different DrawBench run; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))
    for entry in manifest["models"]:
        folder = out / entry["dir"]
        folder.mkdir(exist_ok=True)
        todo = [p for p in prompts
                if not all((folder / f"{p['index']:04d}_{k}.png").is_file() for k in range(n))]
        if todo:
            cascade = Cascade.from_pretrained(entry["name"], device=device)
            for p in tqdm(todo, desc=f"drawbench {entry['name']}", unit="prompt"):
                # A seed per prompt: a resumed run draws the same images as an uninterrupted one.
                images = cascade.generate([p["prompt"]], n=n, seed=seed + p["index"],
                                          batch_size=batch_size, progress=False)
                for k, im in enumerate(images):
                    # Resuming trusts any file under a final name: never leave a cut-off one.
                    save_png_atomic(im, folder / f"{p['index']:04d}_{k}.png")
        rows = [{"image": f"{p['index']:04d}_{k}.png", "prompt": p["prompt"], "category": p["category"]}
                for p in prompts for k in range(n)]
        atomic_write_text(folder / "prompts.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def write_report(directory: str | Path, db: str | Path | None = None) -> tuple[dict, str]:
    """Per-category preference rates from the votes in ``db`` (default DIR/votes.sqlite),
    written to DIR/report.json and DIR/report.md; (report, its markdown)."""
    directory = Path(directory)
    db = Path(db) if db else directory / "votes.sqlite"
    if not db.is_file():
        raise PixcadeError(f"no votes database at {db}")
    order = [m["name"] for m in load_manifest(directory)["models"]] if (directory / MANIFEST).is_file() else None
    report = build_report(VoteStore(db).rows(), order)
    markdown = report_markdown(report)
    atomic_write_text(directory / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(directory / "report.md", markdown + "\n")
    return report, markdown
