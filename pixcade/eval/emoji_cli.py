"""`pixcade eval emoji SUBCOMMAND`: parse, then call pixcade.eval.emoji, emoji_classifier,
emoji_sweep or emoji_grid.

  train      train the judge on DATA/base-64/train.jsonl; report its ceiling on the held-out rows
  generated  judge `pixcade generate` folders of held-out prompts with one or more judges
  sr         PSNR/SSIM of a cascade's SR stage on held-out 256 px rows, beside bicubic
  sweep      a grid of sampling settings (or none: the model as it is), each drawn on one split's
             held-out prompts and judged
  grid       the README picture: held-out prompts, each stage's image, a real one in another style

Every subcommand prints JSON (and with --out writes it), including the command line.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import torch

from pixcade.commands import ArgumentParser, emit_json
from pixcade.data.emoji.manifest import ROW_FIELDS, manifest_rows
from pixcade.errors import PixcadeError
from pixcade.eval import emoji
from pixcade.eval.emoji_classifier import (
    ClassifierConfig, load_judges, read_manifest, save_classifier, train_classifier,
)
from pixcade.eval.emoji_grid import save_emoji_grid
from pixcade.eval.emoji_sweep import TRAIN, SweepRun, check_split, run_sweep, split_prompts, spread
from pixcade.eval.fid import image_index
from pixcade.eval.provenance import model_digest
from pixcade.eval.sr_psnr import sr_stage_name
from pixcade.eval.sweep import cells, parse_axis
from pixcade.limits import check_generation, check_limit
from pixcade.pipeline.cascade import Cascade
from pixcade.pipeline.images import open_image
from pixcade.pipeline.options import as_overrides, parse_assignment, settings_from_text
from pixcade.pipeline.shipped import resolve_model

BASE, SR = "base-64", "sr-256"
JUDGES_HELP = "judge weights (repeat: one report each; default: the two shipped judges, pixcade/weights/emoji-judges)"


def train_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="pixcade eval emoji train")
    p.add_argument("--data", type=Path, required=True, help="a `pixcade data emoji` folder")
    p.add_argument("--out", required=True, help="weights file (.safetensors)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=ClassifierConfig.width, help="channels of the first of four levels")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (training is deterministic per count)")
    p.add_argument("--checkpoints", help="folder: save the run's state there and resume from it (a killed run "
                                         "continues; the weights equal an unbroken run's)")
    p.add_argument("--report", help="also write the JSON report here")
    args = p.parse_args(argv)
    if args.width < 1:
        raise PixcadeError(f"--width must be at least 1, got {args.width}")
    torch.set_num_threads(args.threads)
    train = read_manifest(args.data / BASE / "train.jsonl")
    held = read_manifest(args.data / BASE / "heldout.jsonl")
    config = ClassifierConfig(resolution=train.pixels.shape[-1], width=args.width)
    net, log = train_classifier(train, steps=args.steps, seed=args.seed, batch_size=args.batch_size, config=config,
                                checkpoints=args.checkpoints)
    command = shlex.join(["pixcade", "eval", "emoji", "train", *argv])
    ceiling = emoji.ceiling(net, held)
    digest = save_classifier(args.out, net, {"command": command, "threads": args.threads, **log, "ceiling": ceiling})
    emit_json({"command": command, "weights": args.out, "sha256": digest, "training": log, "ceiling": ceiling},
          args.report)
    return 0


def generated_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="pixcade eval emoji generated")
    p.add_argument("--data", type=Path, required=True, help="a `pixcade data emoji` folder")
    p.add_argument("--classifier", action="append", help=JUDGES_HELP)
    p.add_argument("--images", action="append", required=True, help="a `pixcade generate` output folder (repeat)")
    p.add_argument("--copy-psnr", type=float, default=20.0, help="near-copy threshold in dB (64 px pixels)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    train = read_manifest(args.data / BASE / "train.jsonl")
    held = read_manifest(args.data / BASE / "heldout.jsonl")
    sets = {}
    for folder in args.images:
        listed = image_index(folder)
        if listed is None:
            raise PixcadeError(f"{folder} has no prompts.jsonl (make it with `pixcade generate --out`)")
        sets[folder] = [(open_image(path), prompt) for path, prompt in listed]
    judges = load_judges(args.classifier)
    result = emoji.judge_generated_sets(judges, held, train, sets, copy_psnr=args.copy_psnr)
    command = shlex.join(["pixcade", "eval", "emoji", "generated", *argv])
    emit_json({"command": command, **result}, args.out)
    return 0


def sr_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="pixcade eval emoji sr")
    p.add_argument("--data", type=Path, required=True, help="a `pixcade data emoji` folder")
    p.add_argument("--model", required=True, help="cascade folder or shipped model name")
    p.add_argument("--stage", help="SR stage name (default: the last)")
    p.add_argument("--split", default="all", help="held-out rows of one split: val_cs (choose settings here), "
                                                  "test_cs, test_attr, or all (default)")
    p.add_argument("--limit", type=int, default=None, help="only N of the rows, spread evenly over them")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a sampling setting of the SR stage (repeat), e.g. aug_level=0 or start=0.3")
    p.add_argument("--seed", type=int, default=0)
    # Images per network call: the whole split at 256 px at once needs tens of GB (851 rows: OOM at 24 GB).
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        raise PixcadeError("--batch-size must be at least 1")

    manifest = args.data / SR / "heldout.jsonl"
    rows = manifest_rows(manifest, (*ROW_FIELDS, "split"))
    check_split(args.split)
    rows = spread([r for r in rows if args.split in ("all", r["split"])], args.limit)
    if not rows:
        raise PixcadeError(f"{manifest} has no rows of split {args.split!r}")
    truths = [open_image(manifest.parent / r["image"]) for r in rows]
    model_dir = resolve_model(args.model)
    cascade = Cascade.from_pretrained(model_dir, device=args.device)
    name = sr_stage_name(cascade, args.stage)
    config = cascade.stage(name).config
    settings = settings_from_text([config], [(name, *parse_assignment(text, [name])[1:]) for text in args.set])

    def upsample(lows: list, captions: list[str]) -> list:
        return cascade.generate(captions, seed=args.seed, stages=[name], start_image=lows, batch_size=args.batch_size,
                                **as_overrides(settings))

    report, _ = emoji.judge_sr(upsample, truths, [r["caption"] for r in rows], [r["split"] for r in rows])
    command = shlex.join(["pixcade", "eval", "emoji", "sr", *argv])
    emit_json({"command": command, "model": str(model_dir), "model_digest": model_digest(model_dir), "stage": name,
               "split": args.split, "seed": args.seed, "settings": settings[name].to_dict(), **report}, args.out)
    return 0


def sweep_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="pixcade eval emoji sweep")
    p.add_argument("--model", required=True, help="cascade folder or shipped model name")
    p.add_argument("--data", type=Path, required=True, help="a `pixcade data emoji` folder")
    p.add_argument("--classifier", action="append", help=JUDGES_HELP)
    p.add_argument("--split", default="val_cs", help="held-out prompts: val_cs (default; choose settings here), "
                                                     "test_cs, test_attr or all; or train: training images' "
                                                     "prompts, to measure fit")
    p.add_argument("--vary", action="append", default=[], metavar="[STAGE.]KEY=V,V,...",
                   help="a swept sampling setting (repeat: every combination is a cell; none: one cell, "
                        "`defaults`, the model at its saved settings with --set)")
    p.add_argument("--set", action="append", default=[], metavar="[STAGE.]KEY=VALUE",
                   help="a sampling setting of every cell")
    p.add_argument("--stages", help="comma-separated stages to run (default: all); the last one's images are judged")
    p.add_argument("--limit", type=int, help="only N of the split's prompts, spread evenly over it")
    p.add_argument("--n", type=int, default=1, help="images per prompt")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same in every cell")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--copy-psnr", type=float, default=20.0, help="near-copy threshold in dB (64 px pixels)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True, help="folder: one `pixcade generate` folder per cell, "
                                                            "sweep.json and sweep.md (a rerun resumes)")
    args = p.parse_args(argv)
    if args.n < 1 or args.batch_size < 1:
        raise PixcadeError("--n and --batch-size must be at least 1")
    train = read_manifest(args.data / BASE / "train.jsonl")
    if args.split == TRAIN:  # every training image's first caption, "{name}, {style}"
        held, prompts = train, split_prompts(train, "all", args.limit)
    else:
        held = read_manifest(args.data / BASE / "heldout.jsonl")
        prompts = split_prompts(held, args.split, args.limit)
    if len(prompts) < 2:  # judged against as many real images, and FD and KID need two of each
        raise PixcadeError(f"split {args.split!r} gives {len(prompts)} prompt(s); judging needs at least 2")
    check_generation(prompts, args.n, args.batch_size)
    model_dir = resolve_model(args.model)
    cascade = Cascade.from_pretrained(model_dir, device=args.device)
    axes = [parse_axis(text, cascade.names) for text in args.vary]
    n_cells = len(cells(axes))  # also checks the axes, before the bound that uses their count
    check_limit("images", n_cells * len(prompts) * args.n,
                f"{n_cells} cell(s) x {len(prompts)} prompt(s) x {args.n} image(s)")
    fixed = tuple(parse_assignment(text, cascade.names) for text in args.set)
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
    run = SweepRun(str(model_dir), model_digest(model_dir), prompts, args.n, args.seed, args.batch_size, stages, fixed)
    judges = load_judges(args.classifier)
    command = shlex.join(["pixcade", "eval", "emoji", "sweep", *argv])
    report = run_sweep(cascade, run, axes, args.out, split=args.split, judges=judges, held_out=held, train=train,
                       copy_psnr=args.copy_psnr, command=command)
    emit_json({k: report[k] for k in ("command", "split", "prompts", "n", "seed", "summary")}, None)
    return 0


def grid_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="pixcade eval emoji grid")
    p.add_argument("--model", required=True, help="cascade folder or shipped model name")
    p.add_argument("--data", type=Path, required=True, help="a `pixcade data emoji` folder")
    p.add_argument("--split", default="val_cs", help="held-out prompts: val_cs (default), test_cs, test_attr or all")
    p.add_argument("--prompt", action="append", dest="prompts", metavar="TEXT",
                   help="a held-out prompt (repeat; default: --limit of the split's prompts)")
    p.add_argument("--limit", type=int, default=8, help="prompts taken from the split, spread evenly over it "
                                                         "(default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="the PNG to write (it records this command in its metadata)")
    args = p.parse_args(argv)
    prompts = args.prompts or split_prompts(read_manifest(args.data / BASE / "heldout.jsonl"), args.split, args.limit)
    check_generation(prompts, 1, None)
    model_dir = resolve_model(args.model)
    cascade = Cascade.from_pretrained(model_dir, device=args.device)
    command = shlex.join(["pixcade", "eval", "emoji", "grid", *argv])
    grid = save_emoji_grid(cascade, prompts, args.data, args.out, seed=args.seed, command=command,
                           model_digest=model_digest(model_dir))
    emit_json({"out": args.out, "command": command, "prompts": prompts, "seed": args.seed, "size": list(grid.size)},
              None)
    return 0
