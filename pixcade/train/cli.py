"""`pixcade train` (one stage of a cascade described by a config file) and `pixcade train
export` (a checkpoint as a stage export): parse, then `pixcade.train.trainer.train` /
`pixcade.train.export.export_checkpoint`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pixcade.commands import ArgumentParser
from pixcade.train.config import load_config

EPILOG = """\
The same command runs under `torchrun --nproc_per_node N pixcade train ...` (one process
per GPU; gloo on CPU). Ctrl-C or SIGTERM writes a checkpoint; continue with --resume.
Captions of a folder or manifest dataset that are missing from the embedding cache are
embedded once before training starts; for tar shards run `pixcade embed` first.
`pixcade train export --run RUN_DIR [--checkpoint step-N]` writes a checkpoint's EMA
weights as a stage export (like RUN_DIR/final/), e.g. to evaluate a run still training.
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="pixcade train", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="cascade training config (.json or .toml)")
    p.add_argument("--stage", required=True, help="name of the stage to train (e.g. base, sr256)")
    p.add_argument("--out", help="run directory (default: runs/STAGE)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--max-steps", type=int, help="override train.max_steps")
    p.add_argument("--data", help="override train.data (dataset source for open_dataset)")
    p.add_argument("--embedding-cache", help="override the config's embedding_cache directory")
    p.add_argument("--batch-size", type=int, help="override train.batch_size (global, all ranks)")
    p.add_argument("--num-workers", type=int, help="override train.num_workers")
    p.add_argument("--seed", type=int, help="override train.seed")
    p.add_argument("--init-from", help="override train.init_from: start from a stage export's weights")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available; "
                                    "under torchrun cuda:LOCAL_RANK)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    config = load_config(args.config)
    entry = config.stage(args.stage)
    overrides = {
        "max_steps": args.max_steps, "data": args.data, "batch_size": args.batch_size,
        "num_workers": args.num_workers, "seed": args.seed, "init_from": args.init_from,
    }
    train = entry.train.to_dict()
    train.update({k: v for k, v in overrides.items() if v is not None})
    entry.train = type(entry.train).from_dict(train)  # re-validates
    if args.embedding_cache:
        config.embedding_cache = args.embedding_cache

    from pixcade.train.trainer import train  # heavy imports only once the args are good

    out = Path(args.out) if args.out else Path("runs") / args.stage
    # Interrupted runs return 0 too: they stopped as asked, with a checkpoint to resume.
    train(config, args.stage, out, resume=args.resume, device=args.device)
    return 0


def export_main(argv: list[str]) -> int:
    p = ArgumentParser(
        prog="pixcade train export",
        description="write a run's checkpoint (EMA weights) as a stage export, like RUN_DIR/final/, "
                    "for `pixcade assemble` or Cascade.from_stage_dirs",
    )
    p.add_argument("--run", required=True, help="run directory (as given to `pixcade train --out`)")
    p.add_argument("--checkpoint", help="step-N or N (default: the newest checkpoint)")
    p.add_argument("--out", help="export directory (default: RUN/exports/step-N)")
    args = p.parse_args(argv)
    from pixcade.train.export import export_checkpoint  # torch: only once the arguments are good

    out = export_checkpoint(args.run, args.checkpoint, args.out)
    step = json.loads((out / "stage.json").read_text())["step"]
    print(f"exported step {step} of {args.run} to {out}", file=sys.stderr)
    print(out)
    return 0
