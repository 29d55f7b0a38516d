"""`pixcade train` (one stage of a cascade described by a config file), `pixcade distill`
(the same for a stage entry with a distill section), `pixcade train export` (a
checkpoint as a stage export) and `pixcade train grow` (a base export at twice the
resolution): parse, then `pixcade.train.trainer.train` / `pixcade.train.export`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pixcade.commands import ArgumentParser
from pixcade.errors import PixcadeError
from pixcade.train.config import PARALLEL, load_config

EPILOG = """\
The same command runs under `torchrun --nproc_per_node N pixcade train ...` (one process
per GPU; gloo on CPU). Ctrl-C or SIGTERM writes a checkpoint; continue with --resume.
Captions of a folder or manifest dataset that are missing from the embedding cache are
embedded once before training starts; for tar shards run `pixcade embed` first.
`pixcade train export --run RUN_DIR [--checkpoint step-N]` writes a checkpoint's EMA
weights as a stage export (like RUN_DIR/final/), e.g. to evaluate a run still training.
`pixcade train grow --from EXPORT --out DIR` grows a base stage export by one full-resolution
level (twice the resolution) to start a higher-resolution run from with --init-from.
"""


DISTILL_EPILOG = """\
The config's stage entry has a "distill" section: {"teacher": EXPORT_OR_CASCADE_DIR,
"phase": "guided" | "halve", "guidance_range": [1, 8], "guided_target": "output" |
"thresholded", "steps": N, "factor": K}
(docs/training.md). Phase "guided" makes a student taking the guidance weight as an input
(one network pass per step instead of two); phase "halve" a student of N DDIM steps from a
teacher of K * N (K = 2 unless given).
Everything else (checkpoints, --resume, torchrun, logs, RUN_DIR/final/) is `pixcade train`'s.
"""


def build_parser(prog: str = "pixcade train", distill: bool = False) -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description=None if distill else __doc__,
                       epilog=DISTILL_EPILOG if distill else EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="cascade training config (.json or .toml)")
    p.add_argument("--stage", required=True, help="name of the stage to train (e.g. base, sr256)")
    if distill:
        p.add_argument("--teacher", help="override distill.teacher: a stage export or cascade directory")
        p.add_argument("--phase", choices=("guided", "halve"), help="override distill.phase")
        p.add_argument("--steps", type=int, help="override distill.steps: the halved student's steps")
        p.add_argument("--factor", type=int,
                       help="override distill.factor: teacher DDIM steps per student step (default 2: halving)")
        p.add_argument("--guided-target", choices=("output", "thresholded"),
                       help="override distill.guided_target (phase guided): the guided output, or its x0 after "
                            "the teacher's threshold")
    p.add_argument("--out", help="run directory (default: runs/STAGE)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--resume-from", metavar="CHECKPOINT",
                   help="continue from this checkpoint (e.g. OUT/checkpoints/step-00005000) instead "
                        "of the newest, e.g. when the newest is damaged")
    p.add_argument("--max-steps", type=int, help="override train.max_steps")
    p.add_argument("--data", help="override train.data (dataset source for open_dataset)")
    p.add_argument("--embedding-cache", help="override the config's embedding_cache directory")
    p.add_argument("--batch-size", type=int, help="override train.batch_size (global, all ranks)")
    p.add_argument("--num-workers", type=int, help="override train.num_workers")
    p.add_argument("--seed", type=int, help="override train.seed")
    p.add_argument("--parallel", choices=PARALLEL, help="override train.parallel: how torchrun's ranks share "
                                                        "the model (fsdp shards it; docs/training.md)")
    if not distill:
        p.add_argument("--init-from", help="override train.init_from: start from a stage export's weights")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available; "
                                    "under torchrun cuda:LOCAL_RANK)")
    return p


def main(argv: list[str]) -> int:
    return _run(build_parser().parse_args(argv), distilling=False)


def distill_main(argv: list[str]) -> int:
    """`pixcade distill`: `pixcade train` for a stage entry with a distill section."""
    return _run(build_parser("pixcade distill", distill=True).parse_args(argv), distilling=True)


def _run(args: argparse.Namespace, distilling: bool) -> int:
    config = load_config(args.config)
    entry = config.stage(args.stage)
    if distilling != (entry.distill is not None):
        raise PixcadeError(f"stage {args.stage!r} has a distill section: run `pixcade distill`" if not distilling
                           else f"stage {args.stage!r} has no distill section (docs/training.md): nothing to distil")
    if distilling:
        changes = {"teacher": args.teacher, "phase": args.phase, "steps": args.steps, "factor": args.factor,
                   "guided_target": args.guided_target}
        distill = entry.distill.to_dict()
        distill.update({k: v for k, v in changes.items() if v is not None})
        entry.distill = type(entry.distill).from_dict(distill)  # re-validates
    overrides = {
        "max_steps": args.max_steps, "data": args.data, "batch_size": args.batch_size,
        "num_workers": args.num_workers, "seed": args.seed, "init_from": getattr(args, "init_from", None),
        "parallel": args.parallel,
    }
    train = entry.train.to_dict()
    train.update({k: v for k, v in overrides.items() if v is not None})
    entry.train = type(entry.train).from_dict(train)  # re-validates
    if args.embedding_cache:
        config.embedding_cache = args.embedding_cache

    from pixcade.train.trainer import train  # heavy imports only once the args are good

    out = Path(args.out) if args.out else Path("runs") / args.stage
    # Interrupted runs return 0 too: they stopped as asked, with a checkpoint to resume.
    train(config, args.stage, out, resume=args.resume, resume_from=args.resume_from, device=args.device)
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


def grow_main(argv: list[str]) -> int:
    p = ArgumentParser(
        prog="pixcade train grow",
        description="grow a base stage export by one full-resolution level (twice the resolution; the trained "
                    "levels keep their weights and pixel scale, the new top level starts as a pass-through), "
                    "to start a higher-resolution run from with --init-from",
    )
    p.add_argument("--from", dest="source", required=True, help="a stage export (or run directory, or CASCADE_DIR:STAGE)")
    p.add_argument("--out", required=True, help="directory for the grown stage export")
    args = p.parse_args(argv)
    from pixcade.train.export import grow_export  # torch: only once the arguments are good

    out = grow_export(args.source, args.out)
    stage = json.loads((out / "stage.json").read_text())["stage"]
    print(f"grew {args.source} to {stage['resolution']} px at {out}; train it with this U-Net config:", file=sys.stderr)
    print(json.dumps(stage["unet"]), file=sys.stderr)
    print(out)
    return 0
