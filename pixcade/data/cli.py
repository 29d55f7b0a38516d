"""`pixcade data shapes --n N --res R --out DIR`: parse, then
`pixcade.data.shapes_dataset.write_shapes_dataset`."""

from __future__ import annotations

import argparse
from pathlib import Path

from pixcade.data.render import MIN_RESOLUTION
from pixcade.data.shapes import HELD_OUT, SCENE_KINDS, kind_probabilities
from pixcade.data.shapes_dataset import write_shapes_dataset
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


def shapes_main(argv: list[str]) -> int:
    args = _shapes_parser().parse_args(argv)
    write_shapes_dataset(
        args.out, args.n, args.res, args.seed, args.include_held_out, kind_weights=args.kind_weights
    )
    print(f"wrote {args.n} images of {args.res}x{args.res} px to {args.out}")
    return 0
