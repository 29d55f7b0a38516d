#!/usr/bin/env python
"""Does the dataset's SVG rendering match what the vendor's own pipeline draws? (issue 28)

    npm pack emoji-datasource-twitter@16.0.0 && tar xzf emoji-datasource-twitter-16.0.0.tgz
    python scripts/emoji_render_check.py --data ~/pixcade-runs/emoji-data --style twemoji \\
        --vendor-png package/img/twitter/64 --sheet /tmp/render-sheet.png

PSNR of each of the style's 64 px images (rendered by resvg from the pinned SVGs) against
the vendor's own 64 px PNG of the same key, both on white; the distribution and the worst
keys (where to look by eye: a redesign between the two versions, or a rendering fault).
`--sheet` also writes a few keys across every style at 256 px side by side, for the eye
(not to be committed: some styles are share-alike).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pixcade.data.emoji.manifest import manifest_rows
from pixcade.data.emoji.spec import STYLES

SHEET_KEYS = ("1f680", "1f355", "2764", "1f525", "1f308", "1f600")


def on_white(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    if rgba.size != (size, size):
        rgba = rgba.resize((size, size), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", rgba.size, "white")
    canvas.alpha_composite(rgba)
    return np.asarray(canvas.convert("RGB"), dtype=np.float64)


def plain_key(name: str) -> str:
    """A key as both namings agree on it: no variation selectors, no leading zeros."""
    return name.replace("-fe0f", "").lstrip("0")


def style_images(data: Path, folder: str, style: str) -> dict[str, Path]:
    """key -> image of ``style`` in the dataset's training and held-out rows."""
    out: dict[str, Path] = {}
    for manifest in ("train.jsonl", "heldout.jsonl"):
        for r in manifest_rows(data / folder / manifest):
            if r["style"] == style:
                out.setdefault(r["key"], data / folder / r["image"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a `pixcade data emoji` folder")
    p.add_argument("--style", default="twemoji")
    p.add_argument("--vendor-png", type=Path, required=True, help="the vendor's 64 px PNGs, named by key")
    p.add_argument("--worst", type=int, default=40)
    p.add_argument("--sheet", type=Path, help="also write a sheet of a few keys across the styles at 256 px")
    args = p.parse_args(argv)

    ours = style_images(args.data, "base-64", args.style)
    vendor = {plain_key(f.stem): f for f in args.vendor_png.glob("*.png")}
    scores = []
    for key, path in ours.items():
        if plain_key(key) in vendor:
            a, b = on_white(path, 64), on_white(vendor[plain_key(key)], 64)
            scores.append((10 * np.log10(255.0**2 / max(((a - b) ** 2).mean(), 1e-10)), key))
    if not scores:
        raise SystemExit(f"emoji_render_check: no {args.style} key of {args.data} has a PNG in {args.vendor_png}")
    scores.sort()
    db = np.array([s for s, _ in scores])
    report = {"style": args.style, "ours": len(ours), "matched": len(scores), "median_db": float(np.median(db)),
              "p5_db": float(np.percentile(db, 5)), "below_20_db": int((db < 20).sum()),
              "below_25_db": int((db < 25).sum()), "worst": [[k, round(s, 2)] for s, k in scores[: args.worst]]}
    if args.sheet:
        images = {s.name: style_images(args.data, "sr-256", s.name) for s in STYLES}
        sheet = Image.new("RGB", (132 * len(images), 132 * len(SHEET_KEYS)), "white")
        for i, key in enumerate(SHEET_KEYS):
            for j, style in enumerate(images):
                if key in images[style]:
                    sheet.paste(Image.fromarray(on_white(images[style][key], 128).astype(np.uint8)), (j * 132, i * 132))
        sheet.save(args.sheet)
        report["sheet"] = {"file": str(args.sheet), "columns": list(images), "rows": list(SHEET_KEYS)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
