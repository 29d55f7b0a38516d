"""`pixcade data emoji`: the emoji dataset from the six pinned packages.

Layout of OUT (every file a pure function of the tarballs, pixcade and resvg's version):
- `base-64/train.jsonl`, `base-64/train/STYLE/KEY.png`: the 64 px base set, all six styles.
  A manifest (`pixcade.data.datasets`) with one row per caption template of each image
  (so an image with more names or tags is drawn a little more often); besides `image` and
  `caption`, rows carry `style`, `key` (the merged image's first key) and `family`, which
  the loaders ignore and the evaluator reads.
- `base-64/heldout.jsonl`, `base-64/heldout/...`: the held-out images, one row each, with
  the row's evaluation prompt as caption and its `split`. Never trained on.
- `sr-256/...`: the same at 256 px for the five styles with a 256 px or vector source; the
  trainer makes each example's 64 px input by downsampling it.
- `ATTRIBUTION.md` (each style's source and licence) and `summary.json` (counts: images,
  held-out rows, merged keys, skips by reason).

The folder is written under a temporary name beside OUT and renamed at the end, so a
killed or failed build never leaves a dataset that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pixcade.data.emoji import sources
from pixcade.data.emoji.render import Refused, encode_png, render_raster, render_svg
from pixcade.data.emoji.spec import (
    BASE_SIZE, METADATA_FILE, METADATA_STYLE, NAMES_FILE, NAMES_STYLE, SR_SIZE, STYLES, HeldOut, Style,
    caption_name, captions, family_of, held_out_rows, key_of, prompt, style, swap_medium_tones,
)
from pixcade.errors import PixcadeError
from pixcade.io import remove_stale_temps, temp_name

SETS = (("base-64", BASE_SIZE), ("sr-256", SR_SIZE))


@dataclass
class Emoji:
    order: int  # emoji.json's sort order: the first key of a merged image is its name
    name: str
    tags: list[str]


@dataclass
class Drawing:
    keys: list[str]  # first = the image's key; the rest were identical images
    pngs: dict[int, bytes]  # size -> encoded PNG
    held: HeldOut | None = None


@dataclass
class StyleReport:
    files: int = 0
    images: int = 0
    held_out_images: int = 0
    merged_keys: int = 0
    skipped: Counter = field(default_factory=Counter)
    refused: list[str] = field(default_factory=list)


def load_metadata(emoji_json: bytes, openmoji_json: bytes) -> tuple[dict[str, Emoji], set[str]]:
    """(key -> Emoji for every emoji.json key (skin-tone variations included) except the
    components, named by openmoji's annotation (keys openmoji does not name are left out);
    the component keys)."""
    try:
        rows, named = json.loads(emoji_json), json.loads(openmoji_json)
        names = {key_of(r["hexcode"]): r for r in named}
        out: dict[str, Emoji] = {}
        components = {key_of(r["unified"]) for r in rows if r["category"] == "Component"}
        for row in sorted(rows, key=lambda r: r["sort_order"]):
            if row["category"] == "Component":
                continue
            variants = [row["unified"]] + [v["unified"] for v in (row.get("skin_variations") or {}).values()]
            for code_points in variants:
                key = key_of(code_points)
                entry = names.get(key)
                if key is None or entry is None or not entry.get("annotation"):
                    continue
                tags = [t.strip() for t in (entry.get("tags") or "").split(",") if t.strip()]
                out[key] = Emoji(len(out), caption_name(entry["annotation"]), tags)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
        raise PixcadeError(f"emoji metadata is not in the expected form ({type(err).__name__}: {err})") from None
    return out, {k for k in components if k is not None}


def collect_style(st: Style, files: dict[str, bytes], meta: dict[str, Emoji], components: set[str],
                  report: StyleReport, progress: bool) -> list[Drawing]:
    """The style's images: one per key (the first file name wins when several map to one
    key), rendered, identical renderings merged."""
    report.files = len(files)
    by_key: dict[str, str] = {}
    for fname in sorted(files):
        key = key_of(fname[: -len(st.suffix)])
        if key is not None and st.swap_medium_tones:
            key = swap_medium_tones(key)
        if key is None:
            report.skipped["file name is not a code point sequence"] += 1
        elif key in components:
            report.skipped["component"] += 1
        elif key not in meta:
            report.skipped["not an emoji of emoji.json named by openmoji"] += 1
        elif key in by_key:
            report.skipped["another file has the same key"] += 1
        else:
            by_key[key] = fname
    sizes = [BASE_SIZE] + ([SR_SIZE] if st.has_sr_source else [])
    draw = render_svg if st.native is None else render_raster
    groups: dict[str, Drawing] = {}
    for key in tqdm(sorted(by_key, key=lambda k: meta[k].order), desc=st.name, unit="img", disable=not progress):
        try:
            pngs = {size: encode_png(draw(files[by_key[key]], size)) for size in sizes}
        except Refused as err:
            report.skipped["refused by the renderer"] += 1
            report.refused.append(f"{by_key[key]}: {err}")
            continue
        digest = hashlib.sha256(pngs[sizes[-1]]).hexdigest()
        if digest in groups:
            groups[digest].keys.append(key)
            report.merged_keys += 1
        else:
            groups[digest] = Drawing([key], pngs)
    return list(groups.values())


def build_emoji_dataset(
    out: Path,
    tarballs: Path,
    *,
    fetch: bool,
    style_names: list[str] | None = None,
    held_out: list[HeldOut] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Builds the dataset into `out` (must not exist or be empty); returns the summary."""
    chosen = [style(n) for n in (style_names or [s.name for s in STYLES])]
    if len({s.name for s in chosen}) != len(chosen):
        raise PixcadeError("a style is named twice")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PixcadeError(f"output folder {out} exists and is not empty")
    needed = list({s.name: s for s in chosen + [style(METADATA_STYLE), style(NAMES_STYLE)]}.values())
    found = sources.locate(needed, Path(tarballs), fetch)
    rows = held_out_rows() if held_out is None else held_out
    held = {(r.style, r.key): r for r in rows}

    _, meta_files = sources.read_members(found[METADATA_STYLE], style(METADATA_STYLE), (METADATA_FILE,))
    _, name_files = sources.read_members(found[NAMES_STYLE], style(NAMES_STYLE), (NAMES_FILE,))
    meta, components = load_metadata(meta_files[METADATA_FILE], name_files[NAMES_FILE])

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent)  # a build killed with -9 left its partial folder here
    tmp = temp_name(out)
    try:
        summary = _write(tmp, chosen, found, meta, components, held, rows, progress)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _write(tmp: Path, chosen: list[Style], found: dict[str, Path], meta: dict[str, Emoji], components: set[str],
           held: dict[tuple[str, str], HeldOut], rows: list[HeldOut], progress: bool) -> dict[str, Any]:
    manifests: dict[tuple[str, str], list[str]] = defaultdict(list)
    reports: dict[str, StyleReport] = {}
    built_keys: set[tuple[str, str]] = set()
    prompt_mismatches: list[str] = []
    for st in chosen:
        files, _ = sources.read_members(found[st.name], st)
        report = reports[st.name] = StyleReport()
        images = collect_style(st, files, meta, components, report, progress)
        del files
        for image in images:
            built_keys.update((st.name, k) for k in image.keys)
            hits = [held[(st.name, k)] for k in image.keys if (st.name, k) in held]
            prompted = [h for h in hits if h.prompt is not None]
            image.held = (prompted or hits or [None])[0]
            part = "heldout" if image.held is not None else "train"
            report.held_out_images += image.held is not None
            report.images += image.held is None
            key = image.keys[0]
            names = [meta[k].name for k in image.keys]
            for set_name, size in SETS:
                if size not in image.pngs:
                    continue
                rel = f"{part}/{st.name}/{key}.png"
                path = tmp / set_name / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(image.pngs[size])
                base = {"image": rel, "style": st.name, "key": key, "family": family_of(key)}
                if image.held is not None:
                    built = prompt(names[0], st.phrase)
                    if image.held.prompt is not None and image.held.prompt != built and size == BASE_SIZE:
                        prompt_mismatches.append(f"{st.name} {key}: {image.held.prompt!r} vs built {built!r}")
                    row = {**base, "caption": image.held.prompt or built, "split": image.held.split,
                           "keys": image.keys}
                    manifests[(set_name, part)].append(json.dumps(row, ensure_ascii=False))
                else:
                    for text in captions(names, meta[key].tags, st.phrase):
                        manifests[(set_name, part)].append(json.dumps({**base, "caption": text}, ensure_ascii=False))
    for (set_name, part), lines in sorted(manifests.items()):
        (tmp / set_name / f"{part}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    chosen_names = {s.name for s in chosen}
    missing = sorted(f"{r.style} {r.key}" for r in rows if r.style in chosen_names and (r.style, r.key) not in built_keys)
    summary = {
        "packages": {s.name: s.spec for s in chosen},
        "images": {"train": sum(r.images for r in reports.values()),
                   "held_out": sum(r.held_out_images for r in reports.values())},
        "held_out_rows": {"listed": sum(r.style in chosen_names for r in rows),
                          "not_in_build": len(missing), "not_in_build_examples": missing[:20],
                          "prompts_differing_from_built_names": prompt_mismatches[:20],
                          "prompts_differing_count": len(prompt_mismatches)},
        "styles": {name: {"files": r.files, "train_images": r.images, "held_out_images": r.held_out_images,
                          "merged_keys": r.merged_keys, "skipped": dict(sorted(r.skipped.items())),
                          "refused": r.refused}
                   for name, r in reports.items()},
    }
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp / "ATTRIBUTION.md").write_text(attribution(chosen), encoding="utf-8")
    return summary


def attribution(chosen: list[Style]) -> str:
    lines = ["# Attribution", "",
             "These images are the work of the artists of each style, under the licence named. They are",
             "redistributed only with this file; share-alike styles (CC-BY-SA) bind what is derived from them.", "",
             "| style | package (npm) | licence |", "| --- | --- | --- |"]
    lines += [f"| {s.phrase} | {s.spec} | {s.licence} |" for s in chosen]
    lines += ["", "Names and tags: openmoji's data/openmoji.json (Unicode CLDR annotations); code points and",
              "categories: emoji-datasource-google's emoji.json. Images were rendered to PNG on white by pixcade.", ""]
    return "\n".join(lines)
