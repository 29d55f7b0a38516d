"""Captions for shapes scenes: the spec's phrasings plus a few of our own.

With no Generator the caption is the spec's own form ("a red circle to the left of a blue
square"); with one, phrasing, synonyms ("big" for large) and number style vary, while the
meaning (what the scorer checks) stays that of the scene.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pixcade.data.shapes import Scene, Shape

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
