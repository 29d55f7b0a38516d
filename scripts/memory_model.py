#!/usr/bin/env python
"""The memory table of docs/training.md: per-GPU bytes of paper-size training, DDP vs FSDP.

    python scripts/memory_model.py --measure   # re-measure activations (~1 min on a CPU)
    python scripts/memory_model.py             # print the table from the stored measurements

Activation bytes per image are measured on narrow copies of each preset and extrapolated
(`pixcade.train.memory`), then stored in benchmarks/results/memory-activations.json;
everything else is computed from the presets built on the meta device. A test checks
that docs/training.md holds exactly the table this prints.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from pixcade.io import atomic_write_text
from pixcade.nn.configs import get_preset
from pixcade.train import memory

REPO = Path(__file__).resolve().parents[1]
MEASURED = REPO / "benchmarks" / "results" / "memory-activations.json"


def measure() -> dict:
    torch.set_num_threads(1)
    per_image = {s.name: memory.activation_bytes_per_image(get_preset(s.preset), s.resolution)
                 for s in memory.PAPER_STAGES}
    return {"activation_bytes_per_image": per_image, "text_tokens": memory.TEXT_TOKENS, "divisors": [8, 16],
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "command": "python scripts/memory_model.py --measure"}


def table(measured: dict) -> str:
    per_image = measured["activation_bytes_per_image"]
    rows = [r for s in memory.PAPER_STAGES for r in memory.memory_rows(s, per_image[s.name])]
    return memory.markdown_table(rows, per_image)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", action="store_true", help=f"measure activations and write {MEASURED.name}")
    args = p.parse_args(argv)
    if args.measure:
        atomic_write_text(MEASURED, json.dumps(measure(), indent=1) + "\n")
    print(table(json.loads(MEASURED.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
