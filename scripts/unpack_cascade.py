"""Turn a saved cascade back into one stage export per stage (the inverse of `pixcade assemble`).

A later training phase starts from an export (`pixcade train --init-from DIR`), and the
assembly step needs one per stage; when the machine that wrote the exports is gone, the
shipped cascade still holds everything they held: each stage's config in ``cascade.json``,
its EMA weights as ``NAME.safetensors`` and its training step in ``sources.json``.

    python scripts/unpack_cascade.py pixcade/weights/shapes --out ~/pixcade-runs/exports \
        --name base=base-p4 --name sr=sr

Assembling the written exports again gives back the same cascade.json and weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import load_file

from pixcade.errors import PixcadeError
from pixcade.train.export import write_stage_export


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cascade", type=Path, help="a cascade directory (cascade.json + NAME.safetensors)")
    p.add_argument("--out", type=Path, required=True, help="parent directory of the exports")
    p.add_argument("--name", action="append", default=[], metavar="STAGE=DIR",
                   help="export directory name for a stage (default: the stage's name)")
    args = p.parse_args(argv)
    try:
        names = dict(item.split("=", 1) for item in args.name)
    except ValueError:
        raise SystemExit(f"--name takes STAGE=DIR, got {args.name!r}")
    try:
        unpack(args.cascade, args.out, names)
    except PixcadeError as err:
        print(f"unpack_cascade: {err}", file=sys.stderr)
        return 2
    return 0


def unpack(cascade: Path, out_parent: Path, names: dict[str, str]) -> None:
    """One export per stage of ``cascade`` under ``out_parent`` (named by ``names``, else the stage)."""
    try:
        meta = json.loads((cascade / "cascade.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PixcadeError(f"{cascade}: not a saved cascade ({err})") from None
    sources_path = cascade / "sources.json"
    steps = {}
    if sources_path.exists():
        steps = {s["stage"]: s.get("step") for s in json.loads(sources_path.read_text())["stages"]}
    weights = {}
    for stage in meta["stages"]:  # every stage read before any export is written
        path = cascade / f"{stage['name']}.safetensors"
        if not path.exists():
            raise PixcadeError(f"{path}: missing; cascade.json names stage {stage['name']!r}")
        weights[stage["name"]] = load_file(path)
    for stage in meta["stages"]:
        name = stage["name"]
        out = write_stage_export(out_parent / names.get(name, name), stage, meta["text_encoder"],
                                 meta["max_length"], weights[name], steps.get(name))
        print(f"{name}: {out} (step {steps.get(name)})")

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
