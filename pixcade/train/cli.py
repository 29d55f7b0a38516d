"""`pixcade train`: train one stage of a cascade described by a config file."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    p = argparse.ArgumentParser(prog="pixcade train", description=__doc__, epilog=EPILOG,
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
    if argv[:1] == ["export"]:  # `pixcade train export`: a checkpoint as a stage export
        from pixcade.train.export import main as export_main

        return export_main(argv[1:])
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
