"""`pixcade eval emoji SUBCOMMAND`: parse, call pixcade.eval.emoji / emoji_classifier.

  train      train the judge on DATA/base-64/train.jsonl; report its ceiling on the held-out rows
  generated  judge `pixcade generate` folders of held-out prompts with one or more judges
  sr         PSNR/SSIM of a cascade's SR stage on held-out 256 px rows, beside bicubic

Every subcommand prints JSON (and with --out writes it), including the command line.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import torch

from pixcade.commands import ArgumentParser, emit_json
from pixcade.errors import PixcadeError
from pixcade.eval import emoji
from pixcade.eval.emoji_classifier import (
    ROW_FIELDS, ClassifierConfig, load_classifier, manifest_rows, read_manifest, save_classifier, train_classifier,
)
from pixcade.eval.fid import image_index
from pixcade.eval.sr_psnr import sr_stage_name
from pixcade.pipeline.cascade import Cascade
from pixcade.pipeline.images import open_image

BASE, SR = "base-64", "sr-256"


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
    p.add_argument("--classifier", action="append", required=True, help="judge weights (repeat: one report each)")
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
    judges = {weights: load_classifier(weights) for weights in args.classifier}
    result = emoji.judge_generated_sets(judges, held, train, sets, copy_psnr=args.copy_psnr)
    command = shlex.join(["pixcade", "eval", "emoji", "generated", *argv])
    emit_json({"command": command, **result}, args.out)
    return 0


def sr_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="pixcade eval emoji sr")
    p.add_argument("--data", type=Path, required=True, help="a `pixcade data emoji` folder")
    p.add_argument("--model", required=True, help="cascade directory")
    p.add_argument("--stage", help="SR stage name (default: the last)")
    p.add_argument("--limit", type=int, default=None, help="only the first N held-out rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out")
    args = p.parse_args(argv)

    manifest = args.data / SR / "heldout.jsonl"
    rows = manifest_rows(manifest, (*ROW_FIELDS, "split"))
    rows = rows[: args.limit] if args.limit else rows
    truths = [open_image(manifest.parent / r["image"]) for r in rows]
    cascade = Cascade.from_pretrained(args.model, device=args.device)
    name = sr_stage_name(cascade, args.stage)

    def upsample(lows: list, captions: list[str]) -> list:
        return cascade.generate(captions, seed=args.seed, stages=[name], start_image=lows)

    report, _ = emoji.judge_sr(upsample, truths, [r["caption"] for r in rows], [r["split"] for r in rows])
    command = shlex.join(["pixcade", "eval", "emoji", "sr", *argv])
    emit_json({"command": command, "stage": name, "seed": args.seed, **report}, args.out)
    return 0
