"""Whole-cascade seconds per image: a reference cascade (today's default) against others,
same run, same machine, interleaved, with accuracy beside the time (issue 24).

    python benchmarks/cascade_speed.py pixcade/weights/shapes student-4=models/student-4 \\
        --accuracy shapes=results/teacher-25/shapes.json --accuracy student-4=results/student-4/shapes.json

Each cascade is a saved cascade directory (`pixcade assemble` makes teacher variants, e.g.
fewer steps, and puts distilled students beside the teacher's other stages), given as DIR or
LABEL=DIR; the first is the reference the speed-ups are against. Every repeat generates the
first ``--prompts`` prompts of the shapes benchmark's 300-prompt set (seed 1234; sampling
seed 0, so the images are the benchmark's own) through the whole cascade, text encoding
included, once per cascade in turn (the order reversed every other repeat, so a burst of load
from elsewhere hits all alike). Reported: wall seconds per image, best of the repeats and
median, process CPU seconds per image (on a shared core the CPU time moves less than the
wall time), each stage's share (of the best repeat), and network evaluations per image. Accuracy comes from
result files (`pixcade eval shapes`: overall accuracy; `pixcade eval sr-psnr`: SR PSNR), and
with ``--score`` also from scoring the timed images themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import machine  # noqa: E402

from pixcade.data.shapes import evaluation_prompts  # noqa: E402
from pixcade.diffusion.precision import dtype_name  # noqa: E402
from pixcade.errors import PixcadeError  # noqa: E402
from pixcade.eval.results import read_headline  # noqa: E402
from pixcade.eval.shapes import score  # noqa: E402
from pixcade.io import atomic_write_text  # noqa: E402
from pixcade.pipeline.cascade import Cascade  # noqa: E402


@dataclass
class Entry:
    """One cascade under test and everything measured on it."""

    label: str
    path: str
    cascade: Cascade
    wall: list[float] = field(default_factory=list)  # seconds per image, one per repeat
    cpu: list[float] = field(default_factory=list)
    stage_wall: list[dict[str, float]] = field(default_factory=list)  # per repeat: stage -> s/image
    accuracy: dict[str, Any] | None = None  # from a result file
    scored: dict[str, Any] | None = None  # from the timed images (--score)


def parse_cascades(specs: list[str]) -> list[tuple[str, str]]:
    """``DIR`` or ``LABEL=DIR`` -> (label, dir); a bare DIR is labelled by its folder name."""
    out = []
    for spec in specs:
        label, eq, path = spec.partition("=")
        if not eq:
            label, path = Path(spec.rstrip("/")).name or spec, spec
        if not label or not path:
            raise PixcadeError(f"cascade {spec!r}: expected DIR or LABEL=DIR")
        out.append((label, path))
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise PixcadeError(f"cascade labels must differ, got {labels}: name them LABEL=DIR")
    return out


@contextlib.contextmanager
def stage_timers(cascade: Cascade, totals: dict[str, float]) -> Iterator[None]:
    """Within the block, each stage's wall seconds in `Stage.sample` add up in ``totals``."""
    for stage in cascade.stages:
        def timed(*args: Any, _name: str = stage.config.name, _sample: Callable = stage.sample,
                  **kwargs: Any) -> torch.Tensor:
            start = time.perf_counter()
            try:
                return _sample(*args, **kwargs)
            finally:
                totals[_name] = totals.get(_name, 0.0) + time.perf_counter() - start

        stage.sample = timed  # type: ignore[method-assign]
    try:
        yield
    finally:
        for stage in cascade.stages:
            del stage.sample  # back to the class's method


def measure(entry: Entry, captions: list[str], batch_size: int, overrides: dict[str, Any]) -> list:
    """One timed whole-cascade run of ``captions``; appends to ``entry``, returns the images."""
    per_stage: dict[str, float] = {}
    with stage_timers(entry.cascade, per_stage):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        images = entry.cascade.generate(captions, seed=0, batch_size=batch_size, progress=False, **overrides)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    n = len(captions)
    entry.wall.append(wall / n)
    entry.cpu.append(cpu / n)
    per_stage["text and rest"] = wall - sum(per_stage.values())
    entry.stage_wall.append({name: seconds / n for name, seconds in per_stage.items()})
    return images


def run(cascades: list[tuple[str, str]], prompts: int, batch_size: int, repeats: int, dtype: str | None,
        accuracy: dict[str, str], do_score: bool) -> dict[str, Any]:
    scenes = evaluation_prompts(300)[:prompts]
    captions = [s.caption for s in scenes]
    overrides = {"dtype": dtype} if dtype else {}
    unknown = set(accuracy) - {label for label, _ in cascades}
    if unknown:
        raise PixcadeError(f"--accuracy for unknown cascade label(s) {sorted(unknown)}")
    heads = {label: read_headline(path) for label, path in accuracy.items()}  # bad files fail before any work
    entries = [Entry(label, path, Cascade.from_pretrained(path)) for label, path in cascades]
    for e in entries:
        if e.label in heads:
            h = heads[e.label]
            e.accuracy = {"metric": h.metric, "value": h.value, "n": h.n, "file": accuracy[e.label]}
        # Load the text encoder and warm the kernels outside the timed runs.
        e.cascade.generate(captions[:1], seed=0, steps=1, progress=False, **overrides)
    for rep in range(repeats):
        for e in entries if rep % 2 == 0 else entries[::-1]:
            images = measure(e, captions, batch_size, overrides)
            print(f"  repeat {rep + 1}/{repeats} {e.label}: {e.wall[-1]:.3f} s/image "
                  f"(cpu {e.cpu[-1]:.3f})", file=sys.stderr, flush=True)
            if do_score and e.scored is None:  # the images are the same every repeat
                o = score(images, scenes)["overall"]
                e.scored = {"metric": "shapes accuracy", "value": o["accuracy"], "n": o["n"]}
    ref = entries[0]
    rows = []
    for e in entries:
        plan = e.cascade.plan(**overrides)
        stages = {}
        for s in plan.stages:
            settings = plan.settings[s.config.name]
            stages[s.config.name] = {"sampler": settings.sampler, "steps": settings.steps, "dtype": settings.dtype,
                                     "precision": dtype_name(settings.dtype, e.cascade.device),
                                     "network_evaluations": s.config.network_evaluations(settings)}
        rows.append({
            "label": e.label, "path": e.path, "stages": stages,
            "network_evaluations": sum(st["network_evaluations"] for st in stages.values()),
            "s_per_image": min(e.wall), "s_per_image_median": statistics.median(e.wall),
            "s_per_image_all": e.wall, "cpu_s_per_image": min(e.cpu),
            "stage_s_per_image": e.stage_wall[e.wall.index(min(e.wall))],  # of the best repeat
            "speedup": min(ref.wall) / min(e.wall), "speedup_median": statistics.median(ref.wall) / statistics.median(e.wall),
            "speedup_cpu": min(ref.cpu) / min(e.cpu),
            "accuracy": e.accuracy, "scored": e.scored,
        })
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "machine": machine("cpu"),
            "threads": torch.get_num_threads(), "prompts": prompts, "batch_size": batch_size,
            "repeats": repeats, "dtype": dtype or "each stage's saved", "rows": rows}


def _acc(a: dict[str, Any] | None) -> str:
    if not a:
        return "n/a"
    fmt = "{:.2f}" if "PSNR" in a["metric"] else "{:.3f}"
    return f"{fmt.format(a['value'])} ({a['metric']}, n={a['n']})"


def markdown(result: dict[str, Any]) -> str:
    stage_names = list(dict.fromkeys(name for r in result["rows"] for name in r["stages"]))
    head = (["cascade"] + [f"{s} (sampler steps, evals)" for s in stage_names] + ["evals/image", "s/image (best)",
            "median", "CPU s/image"] + [f"{s} s/image" for s in stage_names]
            + ["text and rest", "speed-up (best, median, CPU)", "accuracy", "accuracy, timed images"])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in result["rows"]:
        st = r["stages"]
        cells = [r["label"]]
        cells += [f"{st[s]['sampler']} {st[s]['steps']}, {st[s]['network_evaluations']}" if s in st else "-"
                  for s in stage_names]
        cells += [str(r["network_evaluations"]), f"{r['s_per_image']:.3f}", f"{r['s_per_image_median']:.3f}",
                  f"{r['cpu_s_per_image']:.3f}"]
        cells += [f"{r['stage_s_per_image'][s]:.3f}" if s in r["stage_s_per_image"] else "-" for s in stage_names]
        cells += [f"{r['stage_s_per_image']['text and rest']:.3f}",
                  f"{r['speedup']:.2f}x, {r['speedup_median']:.2f}x, {r['speedup_cpu']:.2f}x",
                  _acc(r["accuracy"]), _acc(r["scored"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cascades", nargs="*", default=["shapes"],
                   help="DIR or LABEL=DIR, the reference first (default: the shipped shapes model alone)")
    p.add_argument("--prompts", type=int, default=16, help="prompts timed per repeat (the first of the 300-prompt set)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per cascade (best and median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--dtype", default=None,
                   help="every stage's sampling precision (fp32, bf16); default: each stage's saved setting")
    p.add_argument("--accuracy", action="append", default=[], metavar="LABEL=FILE",
                   help="a result file (shapes.json or sr_psnr.json) of that cascade (repeat)")
    p.add_argument("--score", action="store_true", help="also score the timed images with the shapes scorer")
    p.add_argument("--json", default=None, help="also write the result here")
    a = p.parse_args(argv)
    for name in ("prompts", "batch_size", "repeats", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 1 <= a.prompts <= 300:
        p.error("--prompts must be in 1..300 (the benchmark's prompt set)")
    torch.set_num_threads(a.threads)
    try:
        accuracy = dict(item.split("=", 1) for item in a.accuracy if "=" in item)
        if len(accuracy) != len(a.accuracy):
            raise PixcadeError("--accuracy takes LABEL=FILE")
        result = run(parse_cascades(a.cascades), a.prompts, a.batch_size, a.repeats, a.dtype, accuracy, a.score)
        # What made the report, so a model card can show it beside the numbers.
        result["command"] = shlex.join(["python", "benchmarks/cascade_speed.py", *(argv if argv is not None else sys.argv[1:])])
    except PixcadeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"\n## Whole-cascade sampling: {result['date'][:16]} UTC, {result['machine']}\n")
    print(f"{a.prompts} prompts, batch {a.batch_size}, {a.threads} thread(s), {a.repeats} repeats interleaved, "
          f"dtype: {result['dtype']}; speed-ups against {result['rows'][0]['label']}\n")
    print(markdown(result))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(a.json), json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
