"""`pixcade eval`: FID/KID, CLIP score, the shapes benchmark: parse, then call the library.

Every subcommand prints its result as JSON on stdout (for scripts; progress bars and a
human summary go to stderr) and, with ``--out FILE``, writes the same JSON there.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from pixcade.commands import ArgumentParser, emit_json
from pixcade.data.shapes import evaluation_prompts
from pixcade.errors import PixcadeError
from pixcade.eval.clip_score import clip_score_report, load_clip, pair_images_with_prompts
from pixcade.eval.features import get_extractor
from pixcade.eval.fid import compare_image_sets
from pixcade.eval.provenance import model_digest
from pixcade.eval.shapes_benchmark import BenchmarkRun, run_benchmark, run_sweep
from pixcade.eval.shapes_features import train_shapes_features
from pixcade.eval.sr_psnr import evaluate_sr, write_sr_report
from pixcade.eval.stage_grid import DEFAULT_PROMPTS, save_grid
from pixcade.eval.sweep import axis
from pixcade.limits import check_limit
from pixcade.pipeline.cascade import Cascade
from pixcade.pipeline.options import parse_per_stage


def _command(subcommand: str, argv: list[str]) -> str:
    """The command line that produced a result, recorded in it (the model card cites it)."""
    return shlex.join(["pixcade", "eval", subcommand, *argv])


def _at_least(value: int, flag: str, minimum: int = 1, bound: str | None = None) -> None:
    """``value`` >= ``minimum`` and, for a size-like flag, within the limit ``bound``."""
    if value < minimum:
        raise PixcadeError(f"{flag} must be at least {minimum}, got {value}")
    if bound is not None:
        check_limit(bound, value, flag)


def fid_main(argv: list[str]) -> int:
    return _distance(argv, "fid")


def kid_main(argv: list[str]) -> int:
    return _distance(argv, "kid")


def _distance(argv: list[str], command: str) -> int:
    p = ArgumentParser(prog=f"pixcade eval {command}")
    p.add_argument("--real", required=True, help="folder of images, or dataset shards (e.g. data/{000..009}.tar)")
    p.add_argument("--fake", required=True, help="folder of generated images (of a `pixcade generate` "
                                                 "folder: the final images its prompts.jsonl lists)")
    p.add_argument("--inception-weights", help="FID Inception-v3 weights (.safetensors or pytorch-fid's pt_inception-2015-12-05-*.pth)")
    p.add_argument("--features", help="feature extractor when not the FID Inception: clip:DIR | shapes:FILE | py:MODULE:FACTORY")
    if command == "fid":
        p.add_argument("--kid", action="store_true", help="also compute KID")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="also write the JSON result here")
    args = p.parse_args(argv)
    _at_least(args.batch_size, "--batch-size", bound="batch")
    _at_least(args.kid_subsets, "--kid-subsets")
    _at_least(args.kid_subset_size, "--kid-subset-size", 2)  # an unbiased MMD needs two per set

    extractor = get_extractor(args.features, args.inception_weights, args.device)
    result, skips = compare_image_sets(args.real, args.fake, extractor, batch_size=args.batch_size, device=args.device,
                                       fid=command == "fid", kid=command == "kid" or args.kid,
                                       kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size)
    label = "" if extractor.comparable else f"  [{extractor.note}]"
    summary = ", ".join(f"{k}={result[k]:.4f}" for k in ("fid", "kid") if k in result)
    print(f"{summary} ({extractor.name}){label}", file=sys.stderr)
    for name, stats in skips.items():
        if stats.count:
            print(f"{name} images: {stats.summary()}", file=sys.stderr)
    emit_json(result, args.out)
    return 0


def clip_score_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="pixcade eval clip-score")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--prompts", help="prompts.txt (one per line; sorted images split evenly over them) "
                   "or a .jsonl of {image, prompt} or {images, prompt}; default: the folder's "
                   "prompts.jsonl (as `pixcade generate` writes), else the .txt caption beside each image")
    p.add_argument("--clip", required=True, help="local CLIP model directory (Hugging Face or open_clip format)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="also write the JSON result here")
    args = p.parse_args(argv)
    _at_least(args.batch_size, "--batch-size", bound="batch")

    pairs = pair_images_with_prompts(args.images, args.prompts)
    result = clip_score_report(load_clip(args.clip, args.device), pairs, args.batch_size)
    print(f"CLIP score {result['mean']:.2f} over {result['n_prompts']} prompts", file=sys.stderr)
    emit_json(result, args.out)
    return 0


def shapes_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="pixcade eval shapes")
    p.add_argument("--model", required=True, help="saved cascade directory")
    p.add_argument("--prompts", type=int, default=300, help="number of evaluation prompts")
    p.add_argument("--held-out-fraction", type=float, default=1 / 3, help="share of prompts naming a held-out pair")
    p.add_argument("--prompt-seed", type=int, default=1234, help="seed of the prompt set (keep it to compare models)")
    p.add_argument("--images-per-prompt", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--batch-size", type=int, default=16, metavar="B",
                   help="images per batch (default 16); an image does not depend on it")
    p.add_argument("--device", default="cpu")
    p.add_argument("--guidance", metavar="W,W,...",
                   help="sweep guidance weights, e.g. 1,3,5,8: one benchmark run per setting, and a table")
    p.add_argument("--threshold", metavar="T,T,...",
                   help="sweep thresholds (none, static, dynamic, dynamic:P), e.g. dynamic,static")
    p.add_argument("--sweep-stage", help="the stage the swept settings apply to (default: the base stage; "
                                         "the others keep their saved defaults)")
    p.add_argument("--dtype", metavar="SPEC",
                   help="auto | fp32 | bf16 | fp16 the networks run in, for every run "
                        "(per stage: base=bf16,sr=fp32; default: each stage's saved one)")
    p.add_argument("--out", required=True, help="folder for shapes.json, shapes.md and the images "
                                                "(a sweep: sweep.json, sweep.md and one such folder per setting)")
    args = p.parse_args(argv)
    _at_least(args.batch_size, "--batch-size", bound="batch")
    _at_least(args.images_per_prompt, "--images-per-prompt")
    sweeping = args.guidance is not None or args.threshold is not None
    if args.sweep_stage and not sweeping:
        raise PixcadeError("--sweep-stage needs --guidance and/or --threshold")

    scenes = evaluation_prompts(args.prompts, args.held_out_fraction, args.prompt_seed)
    cascade = Cascade.from_pretrained(args.model, device=args.device)
    options = {"dtype": parse_per_stage(args.dtype, "dtype", str, cascade.names)} if args.dtype else {}
    run = BenchmarkRun(args.model, model_digest(args.model), scenes, args.images_per_prompt, args.seed,
                       args.prompt_seed, args.batch_size, options)
    command = _command("shapes", argv)
    out = Path(args.out)
    if not sweeping:
        report = run_benchmark(cascade, run, out)
        emit_json({"command": command, **report}, str(out / "shapes.json"))
        return 0
    stage = cascade.stage(args.sweep_stage or cascade.names[0]).config.name
    axes = [axis(stage, key, text, flag) for key, text, flag in
            (("guidance_weight", args.guidance, "--guidance"), ("threshold", args.threshold, "--threshold"))
            if text is not None]
    result = run_sweep(cascade, run, out, axes, command)
    emit_json(result, str(out / "sweep.json"))
    return 0


def sr_psnr_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="pixcade eval sr-psnr")
    p.add_argument("--model", required=True, help="saved cascade directory")
    p.add_argument("--stage", help="the super-resolution stage (default: the cascade's last)")
    p.add_argument("--n", type=int, default=200, help="number of scenes (the shapes benchmark's prompt set)")
    p.add_argument("--prompt-seed", type=int, default=1234, help="seed of the prompt set")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--batch-size", type=int, default=16, metavar="B",
                   help="images per batch (default 16); an image does not depend on it")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", metavar="SPEC", help="auto | fp32 | bf16 | fp16 the SR stage runs in "
                                                   "(default: its saved one)")
    p.add_argument("--out", required=True, help="folder for sr_psnr.json, sr_psnr.md and examples.png")
    args = p.parse_args(argv)
    _at_least(args.batch_size, "--batch-size", bound="batch")
    _at_least(args.n, "--n", bound="images")

    scenes = evaluation_prompts(args.n, 1 / 3, args.prompt_seed)
    cascade = Cascade.from_pretrained(args.model, device=args.device)
    report, images = evaluate_sr(cascade, scenes, args.stage, seed=args.seed, batch_size=args.batch_size,
                                 dtype=args.dtype)
    report = {"model": args.model, "model_digest": model_digest(args.model), "command": _command("sr-psnr", argv),
              "prompt_seed": args.prompt_seed, **report}
    print(write_sr_report(args.out, report, images), file=sys.stderr)
    emit_json(report, str(Path(args.out) / "sr_psnr.json"))
    return 0


def grid_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="pixcade eval grid")
    p.add_argument("--model", required=True, help="saved cascade directory")
    p.add_argument("--prompt", action="append", dest="prompts", metavar="TEXT",
                   help="a prompt (repeatable; default: ten shapes prompts, two per scene kind)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--cell", type=int, help="side of each image in the grid (default: the final resolution)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="the PNG to write (it records this command in its metadata)")
    args = p.parse_args(argv)
    if args.cell is not None and args.cell < 8:
        raise PixcadeError("--cell must be at least 8 pixels")

    prompts = args.prompts or list(DEFAULT_PROMPTS)
    cascade = Cascade.from_pretrained(args.model, device=args.device)
    command = _command("grid", argv)
    grid, stages = save_grid(cascade, prompts, args.out, seed=args.seed, cell=args.cell, command=command,
                             model_digest=model_digest(args.model))
    print(json.dumps({"out": str(args.out), "command": command, "stages": stages, "prompts": prompts,
                      "seed": args.seed, "size": list(grid.size)}, indent=2))
    return 0


def train_shapes_features_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="pixcade eval train-shapes-features")
    p.add_argument("--out", required=True, help="where to write the weights (.safetensors)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    _at_least(args.batch_size, "--batch-size", bound="batch")
    _at_least(args.resolution, "--resolution", bound="resolution")

    result = train_shapes_features(args.out, steps=args.steps, resolution=args.resolution, seed=args.seed,
                                   batch_size=args.batch_size)
    print(json.dumps(result, indent=2))
    return 0
