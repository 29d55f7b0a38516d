"""Captions for shapes scenes: the spec's phrasings plus a few of our own.

With no Generator the caption is the spec's own form ("a red circle to the left of a blue
square"); with one, phrasing, synonyms ("big" for large) and number style vary, while the
meaning (what the scorer checks) stays that of the scene.
"""

from __future__ import annotations

import numpy as np

from pixcade.data.scenes import COLOURS, KINDS, SIZE_RANGES, Scene, Shape, validate
from pixcade.errors import PixcadeError

SIZE_WORDS = {"small": ("small",), "large": ("large", "big")}
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
RELATION_WORDS = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "beneath"),
}
REGION_WORDS = {
    "top left": ("top left corner", "top left", "upper left corner"),
    "top right": ("top right corner", "top right", "upper right corner"),
    "bottom left": ("bottom left corner", "bottom left", "lower left corner"),
    "bottom right": ("bottom right corner", "bottom right", "lower right corner"),
    "center": ("center", "middle", "centre"),
}
# "{x}" is the scene's core phrase; the first template is the spec's form.
TEMPLATES_ONE = ("{x}", "a picture of {x}", "there is {x}", "an image of {x}", "{x} on a grey background")
TEMPLATES_MANY = ("{x}", "a picture of {x}", "there are {x}", "an image of {x}", "{x} on a grey background")
DIGIT_PROB = 0.15  # how often a count is written as a digit


def _choose(rng: np.random.Generator | None, options: tuple[str, ...]) -> str:
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _noun_phrase(sh: Shape, rng: np.random.Generator | None, plural: bool = False) -> str:
    words = [sh.colour, sh.kind + ("s" if plural else "")]
    if sh.size_named:
        words.insert(0, _choose(rng, SIZE_WORDS[sh.size_class]))
    return " ".join(words)


def caption(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """The caption of `scene`: the spec's form without `rng`, a random phrasing with it."""
    shapes = scene.shapes
    if scene.kind == "counting":
        n = len(shapes)
        number = str(n) if rng is not None and rng.random() < DIGIT_PROB else NUMBER_WORDS[n]
        core = f"{number} {_noun_phrase(shapes[0], rng, plural=True)}"
        return _choose(rng, TEMPLATES_MANY).format(x=core)
    first = _article(_noun_phrase(shapes[0], rng))
    if scene.kind in ("single",):
        core = first
    elif scene.kind == "position":
        core = f"{first} in the {_choose(rng, REGION_WORDS[scene.region])}"
    else:
        second = _article(_noun_phrase(shapes[1], rng))
        if scene.kind == "two_objects":
            core = f"{first} and {second}"
        else:
            core = f"{first} {_choose(rng, RELATION_WORDS[scene.relation])} {second}"
    return _choose(rng, TEMPLATES_ONE).format(x=core)


# --- reading captions back --------------------------------------------------------------

_PREFIXES = tuple(t.split("{x}")[0] for t in TEMPLATES_ONE + TEMPLATES_MANY if t.split("{x}")[0])
_SUFFIXES = tuple(t.split("{x}")[1] for t in TEMPLATES_ONE if t.split("{x}")[1])


def _size_of(word: str) -> str | None:
    return next((size for size, words in SIZE_WORDS.items() if word in words), None)


def _read_noun(words: list[str], plural: bool) -> tuple[str | None, str, str]:
    """(size or None, colour, kind) from e.g. ["big", "red", "circle"]."""
    size = _size_of(words[0]) if len(words) == 3 else None
    if len(words) not in (2, 3) or (len(words) == 3 and size is None):
        raise ValueError(" ".join(words))
    colour, kind = words[-2], words[-1]
    if plural:
        kind = kind[:-1] if kind.endswith("s") else ""
    if colour not in COLOURS or kind not in KINDS:
        raise ValueError(" ".join(words))
    return size, colour, kind


def _split_singular(text: str) -> tuple[str | None, str, str]:
    words = text.split()
    if not words or words[0] not in ("a", "an"):
        raise ValueError(text)
    return _read_noun(words[1:], plural=False)


def parse_caption(text: str) -> Scene:
    """The scene a caption of ours describes: kind, shapes, sizes named, relation, region.

    Positions and unnamed sizes are placeholders (centre, small): only what the caption
    says is meaningful, which is all the scorer checks. Raises PixcadeError for captions
    outside this module's grammar.
    """
    core = " ".join(text.lower().strip().rstrip(".").split())
    for prefix in _PREFIXES:
        if core.startswith(prefix):
            core = core[len(prefix) :]
            break
    for suffix in _SUFFIXES:
        if core.endswith(suffix):
            core = core[: -len(suffix)]
    relation = region = None
    try:
        first_word = core.split()[0] if core else ""
        digits = {str(n): n for n in NUMBER_WORDS} | {w: n for n, w in NUMBER_WORDS.items()}
        if first_word in digits:
            kind = "counting"
            size, colour, shape_kind = _read_noun(core.split()[1:], plural=True)
            nouns = [(size, colour, shape_kind)] * digits[first_word]
        elif " in the " in core:
            kind = "position"
            head, where = core.split(" in the ", 1)
            region = next(r for r, words in REGION_WORDS.items() if where in words)
            nouns = [_split_singular(head)]
        elif " and " in core:
            kind = "two_objects"
            nouns = [_split_singular(part) for part in core.split(" and ", 1)]
        else:
            found = [
                (rel, phrase) for rel, phrases in RELATION_WORDS.items() for phrase in phrases
                if f" {phrase} " in core
            ]
            if found:
                kind = "relation"
                relation, phrase = max(found, key=lambda f: len(f[1]))  # "to the left of" over "left of"
                nouns = [_split_singular(part) for part in core.split(f" {phrase} ", 1)]
            else:
                kind = "single"
                nouns = [_split_singular(core)]
    except (ValueError, StopIteration, IndexError):
        raise PixcadeError(f"not a shapes caption: {text!r}") from None
    shapes = tuple(
        Shape(colour, shape_kind, size or "small", 0.5, 0.5, SIZE_RANGES[size or "small"][0], size is not None)
        for size, colour, shape_kind in nouns
    )
    scene = Scene(kind=kind, shapes=shapes, caption=text, relation=relation, region=region)
    try:
        validate(scene)
    except PixcadeError as err:
        raise PixcadeError(f"not a shapes caption: {text!r} ({err})") from None
    return scene
