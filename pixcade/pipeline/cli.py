"""`pixcade generate`: prompts in, PNGs out; shards itself under torchrun and resumes."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path

from pixcade.diffusion.precision import stage_precisions
from pixcade.diffusion.samplers import SAMPLERS, SPACINGS
from pixcade.diffusion.settings import FIELD_NAMES
from pixcade.commands import ArgumentParser
from pixcade.errors import PixcadeError
from pixcade.limits import LIMITS, check_generation
from pixcade.pipeline.cascade import Cascade
from pixcade.pipeline.edits import EditRequest
from pixcade.pipeline.folder import GRID_MAX, write_images
from pixcade.pipeline.jobs import pick_device, shard_from_env
from pixcade.pipeline.options import parse_assignment, parse_per_stage, settings_from_text
from pixcade.pipeline.plan import Plan, choose
from pixcade.pipeline.request import Request
from pixcade.pipeline.shipped import resolve_model

EPILOG = f"""\
per-stage options (--sampler, --steps, --guidance, --threshold, --aug-level, --dtype):
  VALUE                   the same for every stage run, e.g. --steps 30
  NAME=VALUE,...          per stage by name, e.g. --sampler base=dpm++,sr=ddim;
                          stages not named keep their saved defaults
  VALUE,NAME=VALUE        all stages VALUE except those named, e.g. --steps 30,sr=20
  samplers: {', '.join(SAMPLERS)}   thresholds: none, static, dynamic, dynamic:P (percentile)
  --aug-level (noise augmentation of an SR stage's low-res input, in [0, 1]; 0 gives the
  best FID, 0.1-0.3 the best-looking images) applies to super-resolution stages only.
  --dtype auto | fp32 | bf16 | fp16: the precision the networks run in; auto (the default)
  is bf16 where the device computes it natively (cuda with bf16, CPUs with avx512_bf16 or
  AMX) and fp32 elsewhere; fp16 needs cuda or mps.
  --set [STAGE.]KEY=VALUE (repeat) sets any sampling setting, for STAGE or every stage
  run. KEY: {', '.join(f for f in FIELD_NAMES if f != "sampler_args")},
  or sampler_args.NAME (the sampler's own arguments). spacings: {', '.join(SPACINGS)}.
  Steps are limited to {LIMITS['steps'][0]} (raise it with PIXCADE_MAX_STEPS=N).

editing (--image PNG): --strength S starts the base stage from the image noised to S
  (0: the image itself, 1: a new image; later stages as usual); with --mask PNG (the
  image's size, white = redraw) only the masked region is redrawn at every stage and the
  rest is kept exactly; --resample R adds RePaint round trips of --jump in t per step;
  --soft-edge P blends the last P pixels inside the mask into the image.

output (names depend only on prompt and image index, so reruns resume):
  OUT/p0000_i00.png ...   final images (prompt 0 image 0, ...)
  OUT/stages/NAME/...     each earlier stage's images, with --save-stages
  OUT/grid.png            prompts x images (at most {GRID_MAX} x {GRID_MAX}), once all are done
  OUT/prompts.jsonl       {{"index", "prompt", "images"}} per prompt; OUT/run.json the settings

At scale: `torchrun --nproc-per-node K -m pixcade.cli generate --prompts FILE ...` - each
rank (RANK / WORLD_SIZE) renders its share; rerunning skips the images already written.
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="pixcade generate", description="Generate images from text prompts with a cascade.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="text prompts")
    p.add_argument("--prompts", dest="prompts_file", metavar="FILE",
                   help="a text file with one prompt per line (blank lines skipped)")
    p.add_argument("--n", type=int, default=1, help="images per prompt (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default="out", metavar="DIR", help="output directory (default: ./out)")
    p.add_argument("--model", metavar="DIR|NAME",
                   help="saved cascade directory, or a shipped model's name (default: shapes)")
    p.add_argument("--stages", metavar="A,B", help="consecutive stages to run (default: all)")
    p.add_argument("--stop-after", metavar="NAME", help="stop after this stage (e.g. the base)")
    p.add_argument("--start-image", metavar="PNG",
                   help="start from this low-res image at the stage that takes its size "
                        "(or the first of --stages, resized)")
    p.add_argument("--save-stages", action="store_true", help="also save every earlier stage's images")
    p.add_argument("--sampler", metavar="SPEC", help="ddpm | ddim | dpm++ (per-stage syntax below)")
    p.add_argument("--steps", metavar="SPEC", help="sampling steps, >= 1")
    p.add_argument("--guidance", metavar="SPEC", help="classifier-free guidance weight, >= 0 (1 = no guidance)")
    p.add_argument("--threshold", metavar="SPEC", help="none | static | dynamic | dynamic:P")
    p.add_argument("--aug-level", metavar="SPEC", help="SR noise-augmentation level in [0, 1]")
    p.add_argument("--set", action="append", default=[], metavar="[STAGE.]KEY=VALUE",
                   help="any sampling setting, e.g. sr.spacing=uniform-t (repeat; see below)")
    p.add_argument("--negative-prompt", metavar="TEXT",
                   help="what guidance steers away from, for every prompt (default: nothing)")
    p.add_argument("--negative-prompts", metavar="FILE",
                   help="one negative prompt per line, one line per prompt (blank lines kept)")
    p.add_argument("--image", metavar="PNG", help="an image to edit instead of drawing a new one")
    p.add_argument("--mask", metavar="PNG", help="inpainting mask for --image: white = redraw")
    p.add_argument("--strength", type=float, metavar="S",
                   help=f"image-to-image strength in [0, 1] (default {EditRequest.strength:g}: from pure noise)")
    p.add_argument("--resample", type=int, metavar="R",
                   help=f"RePaint resampling round trips per step when inpainting (default {EditRequest.resample})")
    p.add_argument("--jump", type=float, metavar="T",
                   help=f"the resampling jump in t (default {EditRequest.jump:g})")
    p.add_argument("--soft-edge", type=int, metavar="P",
                   help=f"blend the last P pixels inside the mask into the image (default {EditRequest.soft_edge})")
    p.add_argument("--dtype", metavar="SPEC", help="auto | fp32 | bf16 | fp16 (default: the stage's saved one, else auto)")
    p.add_argument("--device", choices=("cpu", "cuda", "mps"),
                   help="default: cuda when available (cuda:LOCAL_RANK under torchrun)")
    p.add_argument("--offload", action="store_true",
                   help="keep the weights on the CPU; only the running stage (and the text "
                        "encoder while it encodes) goes to the device")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="images per batch (default 16)")
    return p


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompts)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise PixcadeError(f"prompts file {path} not found")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise PixcadeError(f"prompts file {path} is not UTF-8 text") from None
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise PixcadeError("no prompts given (pass PROMPT arguments or --prompts FILE)")
    return prompts


# flag -> the SamplingSettings field it sets
FLAGS = {"sampler": "sampler", "steps": "steps", "guidance": "guidance_weight", "threshold": "threshold",
         "aug_level": "aug_level", "dtype": "dtype"}


def assignments(args: argparse.Namespace, names: list[str], sr_names: list[str]) -> list[tuple[str | None, str, str]]:
    """The sampling flags and --set as (stage, KEY, VALUE) texts (see settings_from_text)."""
    out: list[tuple[str | None, str, str]] = []
    for dest, key in FLAGS.items():
        text = getattr(args, dest)
        if text is not None:
            targets = sr_names if key == "aug_level" else names
            flag = dest.replace("_", "-")
            out += [(stage, key, raw) for stage, raw in parse_per_stage(text, flag, str, targets).items()]
    return out + [parse_assignment(text, names) for text in args.set]


def read_negatives(args: argparse.Namespace, prompts: list[str]) -> list[str] | None:
    if args.negative_prompt is not None and args.negative_prompts:
        raise PixcadeError("give --negative-prompt or --negative-prompts, not both")
    if args.negative_prompt is not None:
        return [args.negative_prompt] * len(prompts)
    if not args.negative_prompts:
        return None
    path = Path(args.negative_prompts)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise PixcadeError(f"cannot read negative prompts file {path}: {err}") from None
    if len(lines) != len(prompts):
        raise PixcadeError(f"{len(lines)} negative prompts in {path} for {len(prompts)} prompts")
    return [line.strip() for line in lines]


def read_edit(args: argparse.Namespace) -> EditRequest | None:
    """How --image is to be edited (None: no --image), checked before anything is written."""
    if args.image is None:
        if args.mask or args.strength is not None:
            raise PixcadeError("--mask and --strength need --image")
        return None
    if args.start_image:
        raise PixcadeError("give --image (edit) or --start-image (super-resolve), not both")
    # The flags left out take EditRequest's defaults.
    given = {name: getattr(args, name) for name in ("strength", "resample", "jump", "soft_edge")}
    return EditRequest(**{name: value for name, value in given.items() if value is not None})


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    prompts = read_prompts(args)
    if args.n < 1:
        raise PixcadeError(f"--n must be at least 1, got {args.n}")
    if args.batch_size < 1:
        raise PixcadeError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_generation(prompts, args.n, args.batch_size)
    rank, world = shard_from_env()
    negatives = read_negatives(args, prompts)
    request = Request.build(prompts, negative_prompt=negatives, start_image=args.start_image,
                            image=args.image, mask=args.mask, edit=read_edit(args))
    model_dir = resolve_model(args.model)
    cascade = Cascade.from_pretrained(model_dir, device=pick_device(args.device), offload=args.offload)

    stage_list = [s.strip() for s in args.stages.split(",")] if args.stages else None
    # The flags name stages, so the stages are chosen before the settings are read, and
    # only the settings that will run are checked (a saved dtype the flags replace is not).
    chosen = choose(cascade.stages, stage_list, args.stop_after, request.start_side)
    configs = [s.config for s in chosen]
    names, sr_names = [c.name for c in configs], [c.name for c in configs if c.is_super_resolution]
    plan = Plan(chosen, settings_from_text(configs, assignments(args, names, sr_names)))
    cascade.check_precision(plan)
    if request.images is not None:
        plan.check_editable()

    record = {
        "model": str(model_dir.resolve()), "seed": args.seed, "n": args.n, "batch_size": args.batch_size,
        "start_image": str(Path(args.start_image).resolve()) if args.start_image else None,
        "options": {name: s.to_dict() for name, s in plan.settings.items()},
        "precision": stage_precisions(plan.settings, cascade.device),
    }
    if negatives is not None:
        record["negative_prompts_sha256"] = hashlib.sha256(json.dumps(negatives).encode()).hexdigest()
    if request.edit is not None:
        record["edit"] = {
            **dataclasses.asdict(request.edit), "image": str(Path(args.image).resolve()),
            "mask": str(Path(args.mask).resolve()) if args.mask else None,
        }
    written, done, total = write_images(cascade, plan, request, args.out, n=args.n, seed=args.seed,
                                        batch_size=args.batch_size, save_stages=args.save_stages,
                                        rank=rank, world=world, record=record)
    suffix = f" (rank {rank} of {world})" if world > 1 else ""
    print(f"wrote {written} images to {args.out}{suffix}; {done}/{total} done")
    return 0
