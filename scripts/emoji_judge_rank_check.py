#!/usr/bin/env python
"""Do two emoji judges (other seeds) rank models the same way? Checked on three stand-in
"models" of known order, made from real images, before any generator exists:

- `real`: the real held-out image of each prompt (the best a model can do);
- `blurred`: the same, downsampled to 16 px and back (right concept and style, detail lost);
- `other-style`: for each prompt, a training image of the same family in another style
  (right concept, wrong style: what a model that ignores the style phrase would draw).

    python scripts/emoji_judge_rank_check.py --data ~/pixcade-runs/emoji-data --out DIR
    pixcade eval emoji generated --data ~/pixcade-runs/emoji-data --classifier A --classifier B \
        --images DIR/real --images DIR/blurred --images DIR/other-style

The folders have `pixcade generate`'s layout (prompts.jsonl listing each prompt's image).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    base = args.data / "base-64"
    held = [json.loads(line) for line in (base / "heldout.jsonl").read_text().splitlines() if line.strip()]
    train: dict[str, list[dict]] = {}
    for line in (base / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        train.setdefault(row["family"], [])
        if row["image"] not in {r["image"] for r in train[row["family"]]}:
            train[row["family"]].append(row)
    rng = random.Random(args.seed)
    makers = {
        "real": lambda r: Image.open(base / r["image"]).convert("RGB"),
        "blurred": lambda r: Image.open(base / r["image"]).convert("RGB").resize((16, 16), Image.Resampling.BOX)
        .resize((64, 64), Image.Resampling.BICUBIC),
    }

    def other_style(r: dict) -> Image.Image | None:
        options = [t for t in train.get(r["family"], []) if t["style"] != r["style"]]
        return Image.open(base / rng.choice(options)["image"]).convert("RGB") if options else None

    makers["other-style"] = other_style
    for name, make in makers.items():
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i, row in enumerate(held):
            image = make(row)
            if image is None:
                continue
            image.save(folder / f"{i:05d}.png")
            lines.append(json.dumps({"index": i, "prompt": row["caption"], "images": [f"{i:05d}.png"]}))
        (folder / "prompts.jsonl").write_text("\n".join(lines) + "\n")
        print(f"{folder}: {len(lines)} images")


if __name__ == "__main__":
    main()
