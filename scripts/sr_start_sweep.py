"""SR PSNR of a cascade's SR stage started from its noised upsampled input
(`SamplingSettings.start`), over a grid of starts and step counts: the validation sweep
that chooses the start for each step count (docs/distillation-notes.md, issue 24).

    PYTHONPATH=. python scripts/sr_start_sweep.py --model pixcade/weights/shapes --prompt-seed 7 \\
        --starts 0.05,0.08,0.1,0.15,0.2,0.3 --steps 1,2,3,4 --out sweep.json

Each cell is `pixcade eval sr-psnr`'s number (`evaluate_sr`: the true low-res render in, the
true render to compare, sampling seed 0) with the stage's other settings as saved, in fp32.
Choose on validation scenes (a prompt seed other than the card's 1234), report on 1234 once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pixcade.data.shapes import evaluation_prompts
from pixcade.errors import PixcadeError
from pixcade.eval.sr_psnr import evaluate_sr, sr_stage_name
from pixcade.io import atomic_write_text
from pixcade.pipeline.cascade import Cascade


def sweep(model: str, prompt_seed: int, n: int, starts: list[float], steps: list[int]) -> dict:
    cascade = Cascade.from_pretrained(model)
    scenes = evaluation_prompts(n, 1 / 3, prompt_seed)
    config = cascade.stage(sr_stage_name(cascade, None)).config
    saved = config.sampling
    cells, reference = [], None
    try:
        config.sampling = saved.replace(dtype="fp32")
        reference = evaluate_sr(cascade, scenes, progress=False)[0]
        for start in starts:
            for k in steps:
                config.sampling = saved.replace(dtype="fp32", start=start, steps=k)
                report = evaluate_sr(cascade, scenes, progress=False)[0]
                cells.append({"start": start, "steps": k, "psnr_sr": report["psnr_sr"]})
                print(f"start {start:g} steps {k}: {report['psnr_sr']:.2f} dB", file=sys.stderr, flush=True)
    finally:
        config.sampling = saved
    return {"model": model, "prompt_seed": prompt_seed, "n": n,
            "saved_settings": {"psnr_sr": reference["psnr_sr"], **saved.to_dict()},
            "psnr_bicubic": reference["psnr_bicubic"], "cells": cells}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pixcade/weights/shapes")
    p.add_argument("--prompt-seed", type=int, default=7, help="7: the validation scenes (1234 is the card's test set)")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--starts", default="0.05,0.08,0.1,0.15,0.2,0.3")
    p.add_argument("--steps", default="1,2,3,4")
    p.add_argument("--out", help="write the result JSON here")
    a = p.parse_args(argv)
    try:
        result = sweep(a.model, a.prompt_seed, a.n, [float(x) for x in a.starts.split(",")],
                       [int(x) for x in a.steps.split(",")])
    except (PixcadeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1) + "\n"
    if a.out:
        atomic_write_text(Path(a.out), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
