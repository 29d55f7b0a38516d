"""The emoji domain's rules (docs/emoji-spec.md): styles, keys, families, names, captions.

Pure functions of strings; no file is read here. The builder (`pixcade.data.emoji.build`)
and the evaluator (`pixcade.eval.emoji`) share them, so a key, a family or an evaluation
prompt means the same thing everywhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources

from pixcade.errors import PixcadeError


@dataclass(frozen=True)
class Style:
    name: str  # the style's short name (`google`)
    phrase: str  # as captions write it (`Google Noto style`)
    package: str  # npm package name
    version: str  # pinned exactly: every machine builds the same set
    folder: str  # the images' folder inside the package ("" = the package root)
    suffix: str  # the images' file suffix; other files are ignored
    licence: str
    native: int | None  # side of the raster source in pixels; None for vectors
    swap_medium_tones: bool = False  # the @lobehub packages swap 1f3fc and 1f3fd

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def tarball(self) -> str:
        """The file name `npm pack NAME@VERSION` writes (`@scope/x` -> `scope-x-V.tgz`)."""
        return f"{self.package.lstrip('@').replace('/', '-')}-{self.version}.tgz"

    @property
    def has_sr_source(self) -> bool:
        """A 256 px or vector source: the style belongs to the super-resolution set."""
        return self.native is None or self.native >= SR_SIZE


BASE_SIZE = 64
SR_SIZE = 256

STYLES: tuple[Style, ...] = (
    Style("google", "Google Noto style", "emoji-datasource-google", "16.0.0", "img/google/64", ".png",
          "Apache-2.0", native=64),
    Style("twemoji", "Twemoji style", "@twemoji/svg", "15.0.0", "", ".svg", "CC-BY-4.0", native=None),
    Style("openmoji", "OpenMoji style", "openmoji", "17.0.0", "color/svg", ".svg", "CC-BY-SA-4.0", native=None),
    Style("fluent-3d", "Microsoft Fluent 3D style", "@lobehub/fluent-emoji-3d", "1.1.0", "assets", ".webp",
          "MIT", native=256, swap_medium_tones=True),
    Style("fluent-flat", "Microsoft Fluent flat style", "@lobehub/fluent-emoji-flat", "1.1.0", "assets", ".svg",
          "MIT", native=None, swap_medium_tones=True),
    Style("fluent-color", "Microsoft Fluent color style", "@lobehub/fluent-emoji-modern", "1.0.0", "assets", ".svg",
          "MIT", native=None, swap_medium_tones=True),
)
STYLE_BY_NAME = {s.name: s for s in STYLES}
# The three Fluent styles are one drawing rendered three ways: one vendor.
VENDOR = {"google": "google", "twemoji": "twemoji", "openmoji": "openmoji",
          "fluent-3d": "fluent", "fluent-flat": "fluent", "fluent-color": "fluent"}

# Metadata lives in two of the packages.
METADATA_STYLE, METADATA_FILE = "google", "emoji.json"
NAMES_STYLE, NAMES_FILE = "openmoji", "data/openmoji.json"

SKIN_TONES = frozenset({"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"})
GENDER_SIGNS = frozenset({"2640", "2642"})
PEOPLE = frozenset({"1f468", "1f469", "1f9d1"})  # man, woman, person
PERSON = "1f9d1"
ZWJ = "200d"
VARIATION_SELECTOR = "fe0f"
_HEX = re.compile(r"^[0-9a-f]{1,6}$")


def style(name: str) -> Style:
    try:
        return STYLE_BY_NAME[name]
    except KeyError:
        raise PixcadeError(f"unknown emoji style {name!r} (choose from {', '.join(STYLE_BY_NAME)})") from None


def key_of(code_points: str) -> str | None:
    """`1F469-200D-1F692`, `0036-FE0F-20E3` -> `1f469-200d-1f692`, `36-20e3`; None for a
    string that is not a dash-separated code point sequence (`e2cc` passes: it is one)."""
    parts = [p.lower().lstrip("0") or "0" for p in code_points.split("-")]
    if not all(_HEX.match(p) for p in parts):
        return None
    kept = [p for p in parts if p != VARIATION_SELECTOR]
    return "-".join(kept) if kept else None


def swap_medium_tones(key: str) -> str:
    """Mends the @lobehub packages' defect: medium-light (1f3fc) <-> medium (1f3fd)."""
    swap = {"1f3fc": "1f3fd", "1f3fd": "1f3fc"}
    return "-".join(swap.get(p, p) for p in key.split("-"))


def family_of(key: str) -> str:
    """Skin tones and gender signs removed (literally: joiners stay), then a leading man or
    woman joined to more (3+ parts, then 200d) becomes person: 1f469-1f3fd-200d-1f692 ->
    1f9d1-200d-1f692."""
    parts = [p for p in key.split("-") if p not in SKIN_TONES and p not in GENDER_SIGNS]
    if len(parts) >= 3 and parts[0] in PEOPLE and parts[1] == ZWJ:
        parts[0] = PERSON
    return "-".join(parts)


def caption_name(annotation: str) -> str:
    """CLDR name -> caption name: "flag: X" -> "flag of X", "keycap: #" -> "keycap #",
    then every ": " -> ", "."""
    name = annotation.strip()
    if name.startswith("flag: "):
        name = "flag of " + name[len("flag: "):]
    elif name.startswith("keycap: "):
        name = "keycap " + name[len("keycap: "):]
    return name.replace(": ", ", ")


def extra_tags(name: str, tags: list[str], limit: int = 3) -> list[str]:
    """Up to `limit` tags, in their listed order, that the name does not already contain
    (as whole words, ignoring case)."""
    out: list[str] = []
    for tag in tags:
        tag = tag.strip()
        if not tag or tag in out or re.search(r"\b" + re.escape(tag) + r"\b", name, re.IGNORECASE):
            continue
        out.append(tag)
        if len(out) == limit:
            break
    return out


def prompt(name: str, style_phrase: str) -> str:
    """The evaluation prompt ("rocket, Twemoji style"): the first caption template."""
    return f"{name}, {style_phrase}"


def captions(names: list[str], tags: list[str], style_phrase: str) -> list[str]:
    """Every caption template of one image: `names[0]` is its name, the rest the names of
    the keys merged into it (identical images), `tags` the openmoji tags of names[0]."""
    name = names[0]
    out = [prompt(name, style_phrase), f"an emoji of {name} in {style_phrase}", f"{style_phrase} emoji: {name}"]
    chosen = extra_tags(name, tags)
    if chosen:  # without tags the template would repeat the first one
        out.append(f"{prompt(name, style_phrase)}; {', '.join(chosen)}")
    out += [prompt(alias, style_phrase) for alias in names[1:]]
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class HeldOut:
    style: str
    key: str
    split: str  # val_cs, test_cs or test_attr
    prompt: str | None  # None: a further key of a merged image


SPLITS = ("val_cs", "test_cs", "test_attr")


def held_out_rows(text: str | None = None) -> list[HeldOut]:
    """The held-out (style, key) rows; by default the copy shipped with pixcade."""
    if text is None:
        text = resources.files("pixcade.data.emoji").joinpath("heldout.jsonl").read_text(encoding="utf-8")
    rows = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append(HeldOut(row["style"], row["key"], row["split"], row.get("prompt")))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise PixcadeError(f"held-out list line {line_no}: not a held-out row ({err})") from None
        if rows[-1].split not in SPLITS or rows[-1].style not in STYLE_BY_NAME:
            raise PixcadeError(f"held-out list line {line_no}: unknown split or style in {line.strip()}")
    return rows
