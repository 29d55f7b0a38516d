"""`pixcade assemble`: the trainer's per-stage exports -> one saved cascade directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pixcade.commands import ArgumentParser
from pixcade.io import atomic_write_text
from pixcade.pipeline import saving
from pixcade.pipeline.cascade import assemble

SOURCES = "sources.json"  # beside cascade.json; Cascade ignores it


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="pixcade assemble",
        description="Combine stage exports (RUN_DIR/final/, or a `pixcade train export` directory), "
                    "given base first, into a cascade directory that `pixcade generate --model` loads.",
    )
    p.add_argument("stages", nargs="+", metavar="STAGE_DIR",
                   help="run directories (their final/), export directories, or CASCADE_DIR:STAGE (a stage of "
                        "a saved cascade), in cascade order")
    p.add_argument("--out", required=True, metavar="DIR", help="cascade directory to write")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   help="a stage's sampling setting instead of its training config's (repeat), e.g. "
                        "base.guidance_weight=5 base.threshold=static base.sampler_args.NAME=VALUE; "
                        "KEY: a field of pixcade.diffusion.settings.SamplingSettings")
    p.add_argument("--storage", choices=sorted(saving.STORAGE_DTYPES), default="fp32",
                   help="precision of the weight files (loading casts back to fp32): half precision halves the "
                        "download; ship it only where sampling was measured equal")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)

    cascade = assemble(args.stages, args.out, args.set, args.storage)
    out = Path(args.out)
    sources = []
    for d in args.stages:
        export = saving.read_stage_export(d)
        size = (out / f"{export.config.name}.safetensors").stat().st_size
        sources.append({"stage": export.config.name, "export": str(export.weights.parent), "step": export.step,
                        "weights_bytes": size})
    # Which training step each stage's weights come from: the model card cites it.
    atomic_write_text(out / SOURCES, json.dumps({"stages": sources}, indent=2) + "\n")
    print(json.dumps({"out": str(out), "text_encoder": cascade.text_encoder, "stages": sources,
                      "total_bytes": sum(s["weights_bytes"] for s in sources)}, indent=2))
    return 0
