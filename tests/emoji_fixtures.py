"""Six fake npm tarballs with the real packages' layout, a few emoji each, built in memory.

Each emoji is drawn as a flat colour square (SVG rect, or PNG/WebP with a transparent
margin whose hidden RGB is red, so a non-premultiplied downsample would show a red edge).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

from pixcade.data.emoji.spec import STYLES, HeldOut, Style

# key -> (emoji.json unified, openmoji annotation, tags, colour)
EMOJI = {
    "1f680": ("1F680", "rocket", "launch, space, rocket", (200, 30, 30)),
    "1f339": ("1F339", "rose", "flower, love", (220, 0, 90)),
    "1f1f3-1f1f4": ("1F1F3-1F1F4", "flag: Norway", "NO, flag", (10, 40, 160)),
    "1f1e7-1f1fb": ("1F1E7-1F1FB", "flag: Bouvet Island", "BV, flag", (10, 40, 160)),  # same image as Norway
    "36-20e3": ("0036-FE0F-20E3", "keycap: 6", "6, keycap, six", (90, 90, 90)),
    "1f44d": ("1F44D", "thumbs up", "hand, +1", (250, 200, 40)),
    "1f44d-1f3fc": ("1F44D-1F3FC", "thumbs up: medium-light skin tone", "", (240, 200, 160)),
    "1f44d-1f3fd": ("1F44D-1F3FD", "thumbs up: medium skin tone", "", (200, 150, 100)),
}
COMPONENT = ("1F3FB", "light skin tone")


def emoji_json() -> bytes:
    rows = [
        {"unified": "1F680", "category": "Travel & Places", "sort_order": 1},
        {"unified": "1F339", "category": "Animals & Nature", "sort_order": 2},
        {"unified": "1F1F3-1F1F4", "category": "Flags", "sort_order": 3},
        {"unified": "1F1E7-1F1FB", "category": "Flags", "sort_order": 4},
        {"unified": "0036-FE0F-20E3", "category": "Symbols", "sort_order": 5},
        {"unified": "1F44D", "category": "People & Body", "sort_order": 6,
         "skin_variations": {"1F3FC": {"unified": "1F44D-1F3FC"}, "1F3FD": {"unified": "1F44D-1F3FD"}}},
        {"unified": COMPONENT[0], "category": "Component", "sort_order": 7},
    ]
    return json.dumps(rows).encode()


def openmoji_json() -> bytes:
    rows = [{"hexcode": u, "annotation": a, "tags": t} for u, a, t, _ in EMOJI.values()]
    rows.append({"hexcode": COMPONENT[0], "annotation": COMPONENT[1], "tags": ""})
    return json.dumps(rows).encode()


def svg(colour: tuple[int, int, int]) -> bytes:
    r, g, b = colour
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 36 36">'
            f'<rect x="6" y="6" width="24" height="24" fill="rgb({r},{g},{b})"/></svg>').encode()


def raster(colour: tuple[int, int, int], size: int, fmt: str) -> bytes:
    image = Image.new("RGBA", (size, size), (255, 0, 0, 0))  # transparent, hidden red
    m = size // 6
    image.paste(Image.new("RGBA", (size - 2 * m, size - 2 * m), colour + (255,)), (m, m))
    buf = io.BytesIO()
    image.save(buf, format=fmt, lossless=True) if fmt == "WEBP" else image.save(buf, format=fmt)
    return buf.getvalue()


def file_stem(style: Style, key: str) -> str:
    unified = EMOJI[key][0]
    if style.name == "openmoji":
        return unified
    if style.swap_medium_tones:  # the vendor's defect: 1f3fc and 1f3fd swapped
        unified = unified.replace("1F3FC", "X").replace("1F3FD", "1F3FC").replace("X", "1F3FD")
    return unified.lower()


def image_bytes(style: Style, key: str) -> bytes:
    colour = EMOJI[key][3]
    if style.native is None:
        return svg(colour)
    return raster(colour, style.native, "PNG" if style.suffix == ".png" else "WEBP")


def write_tarball(path: Path, style: Style, files: dict[str, bytes]) -> None:
    manifest = json.dumps({"name": style.package, "version": style.version}).encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [("package/package.json", manifest), *sorted(files.items())]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))


def make_packages(folder: Path, extra: dict[str, dict[str, bytes]] | None = None) -> Path:
    """Writes the six tarballs into `folder`; `extra[style]` adds files (package paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    for style in STYLES:
        prefix = "package/" + (style.folder + "/" if style.folder else "")
        files = {prefix + file_stem(style, k) + style.suffix: image_bytes(style, k) for k in EMOJI}
        files[prefix + COMPONENT[0].lower() + style.suffix] = image_bytes(style, "1f680")
        if style.name == "google":
            files["package/emoji.json"] = emoji_json()
        if style.name == "openmoji":
            files["package/data/openmoji.json"] = openmoji_json()
        files.update((extra or {}).get(style.name, {}))
        write_tarball(folder / style.tarball, style, files)
    return folder


HELD_OUT = [
    HeldOut("twemoji", "1f680", "test_cs", "rocket, Twemoji style"),
    HeldOut("google", "1f1e7-1f1fb", "val_cs", None),  # a further key of the merged flag
    HeldOut("google", "1f1f3-1f1f4", "val_cs", "flag of Norway, Google Noto style"),
]
