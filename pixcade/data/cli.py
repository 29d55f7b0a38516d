"""`pixcade data shapes`: parse, then `write_shapes_dataset`.

`pixcade data shapes --n N --res R --out DIR` writes the shapes domain in the on-disk form of
real data, a folder of images with same-named .txt captions (`00000000.png`,
`00000000.txt`), plus `00000000.json` holding each image's structured scene, which generic
loaders ignore and the shapes scorer reads.

"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from pixcade.data.render import MIN_RESOLUTION, render
from pixcade.data.shapes import HELD_OUT, SCENE_KINDS, kind_probabilities, scene_for_index
from pixcade.commands import ArgumentParser
from pixcade.errors import PixcadeError


def _shapes_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="pixcade data shapes",
        description="Write a shapes dataset: DIR/00000000.png + .txt caption + .json scene.",
    )
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--res", type=int, required=True, help=f"image side in pixels (>= {MIN_RESOLUTION})")
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; image i depends only on (seed, i)")
    p.add_argument(
        "--include-held-out",
        action="store_true",
        help="also draw the held-out colour-shape pairs (" + ", ".join(sorted(" ".join(p) for p in HELD_OUT)) + ")",
    )
    p.add_argument(
        "--kind-weights",
        type=parse_kind_weights,
        default=None,
        metavar="KIND=W,...",
        help="relative frequency of scene kinds, e.g. relation=3,counting=2 (kinds not named get 0; "
        f"default: all equal). Kinds: {', '.join(SCENE_KINDS)}",
    )
    return p


def parse_kind_weights(text: str) -> dict[str, float]:
    """'relation=3,counting=2' -> {'relation': 3.0, 'counting': 2.0}, checked."""
    weights: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected KIND=WEIGHT, got {item.strip()!r}")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight of {name.strip()!r} is not a number: {value!r}") from None
    try:
        kind_probabilities(weights)
    except PixcadeError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return weights


def write_shapes_dataset(
    out: Path,
    n: int,
    resolution: int,
    seed: int = 0,
    include_held_out: bool = False,
    progress: bool = True,
    kind_weights: dict[str, float] | None = None,
) -> None:
    """Writes `n` scenes into the folder `out` (created; must be empty if it exists).

    `kind_weights` skews the mix of scene kinds (see `sample_scene`), e.g. to fine-tune on
    the kinds a model gets wrong most; None keeps every kind equally frequent.
    """
    if kind_weights is not None:
        kind_probabilities(kind_weights)  # fail before the folder is made
    if n < 1:
        raise PixcadeError(f"--n must be at least 1, got {n}")
    if resolution < MIN_RESOLUTION:
        raise PixcadeError(f"--res must be at least {MIN_RESOLUTION}, got {resolution}")
    if seed < 0:
        raise PixcadeError(f"--seed must be non-negative, got {seed}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PixcadeError(f"output folder {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    exclude = () if include_held_out else HELD_OUT
    width = max(8, len(str(n - 1)))
    # One process: rendering a 64 px scene takes well under a millisecond, so writing the
    # files dominates and more workers would mostly contend for the disk.
    for i in tqdm(range(n), desc="shapes", unit="img", disable=not progress):
        scene = scene_for_index(seed, i, exclude_pairs=exclude, kind_weights=kind_weights)
        stem = out / f"{i:0{width}d}"
        render(scene, resolution).save(stem.with_suffix(".png"))
        stem.with_suffix(".txt").write_text(scene.caption + "\n", encoding="utf-8")
        stem.with_suffix(".json").write_text(scene.to_json() + "\n", encoding="utf-8")


def shapes_main(argv: list[str]) -> int:
    args = _shapes_parser().parse_args(argv)
    write_shapes_dataset(
        args.out, args.n, args.res, args.seed, args.include_held_out, kind_weights=args.kind_weights
    )
    print(f"wrote {args.n} images of {args.res}x{args.res} px to {args.out}")
    return 0
