"""The shapes domain's scene model: its vocabulary (colours, shape kinds, sizes, scene kinds,
relations, regions, the held-out colour-shape pairs), `Shape`, `Scene` and `validate`.

Captions (`pixcade.data.captions`) and sampling (`pixcade.data.shapes`) both build on it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from pixcade.errors import PixcadeError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (235, 205, 35),
    "green": (45, 160, 70),
    "cyan": (35, 185, 205),
    "blue": (40, 75, 215),
    "purple": (135, 60, 185),
    "black": (35, 35, 35),
}
KINDS: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.16, 0.20), "large": (0.28, 0.34)}
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("yellow", "star"), ("cyan", "square"), ("orange", "diamond"), ("green", "circle")}
)

SCENE_KINDS: tuple[str, ...] = ("single", "counting", "two_objects", "relation", "position")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
REGIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right", "center")
COUNTS: tuple[int, ...] = (2, 3, 4)


@dataclass(frozen=True)
class Shape:
    colour: str
    kind: str
    size_class: str  # "small" | "large": what was drawn
    cx: float
    cy: float
    s: float  # side of the bounding box, as a fraction of the canvas side
    # Whether the caption names the size; only then must an image match it.
    size_named: bool = False

    @property
    def pair(self) -> tuple[str, str]:
        return (self.colour, self.kind)

    @property
    def box(self) -> tuple[float, float, float, float]:
        h = self.s / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


@dataclass(frozen=True)
class Scene:
    kind: str  # one of SCENE_KINDS
    shapes: tuple[Shape, ...]
    caption: str = ""
    relation: str | None = None  # for kind "relation": shapes[0] <relation> shapes[1]
    region: str | None = None  # for kind "position"

    @property
    def held_out(self) -> bool:
        return any(sh.pair in HELD_OUT for sh in self.shapes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shapes"] = [asdict(sh) for sh in self.shapes]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Scene":
        try:
            shapes = tuple(Shape(**sh) for sh in d["shapes"])
            scene = cls(
                kind=d["kind"],
                shapes=shapes,
                caption=d.get("caption", ""),
                relation=d.get("relation"),
                region=d.get("region"),
            )
        except (KeyError, TypeError) as err:
            raise PixcadeError(f"not a shapes scene: {err}") from None
        validate(scene)
        return scene

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Scene":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as err:
            raise PixcadeError(f"not a shapes scene (bad JSON: {err})") from None


def validate(scene: Scene) -> None:
    """Checks a scene's vocabulary and structure (not its geometry); raises PixcadeError."""
    if scene.kind not in SCENE_KINDS:
        raise PixcadeError(f"unknown scene kind {scene.kind!r} (choose from {', '.join(SCENE_KINDS)})")
    for sh in scene.shapes:
        if sh.colour not in COLOURS:
            raise PixcadeError(f"unknown colour {sh.colour!r}")
        if sh.kind not in KINDS:
            raise PixcadeError(f"unknown shape {sh.kind!r}")
        if sh.size_class not in SIZE_RANGES:
            raise PixcadeError(f"unknown size {sh.size_class!r}")
    n = len(scene.shapes)
    expected = {"single": (1,), "counting": COUNTS, "two_objects": (2,), "relation": (2,), "position": (1,)}
    if n not in expected[scene.kind]:
        raise PixcadeError(f"a {scene.kind} scene can't have {n} shapes")
    if scene.kind == "counting" and len({sh.pair for sh in scene.shapes}) != 1:
        raise PixcadeError("a counting scene's shapes must share colour and shape")
    if scene.kind in ("two_objects", "relation") and scene.shapes[0].pair == scene.shapes[1].pair:
        raise PixcadeError(f"a {scene.kind} scene needs two different colour-shape pairs")
    if (scene.kind == "relation") != (scene.relation is not None):
        raise PixcadeError("a relation is given exactly for relation scenes")
    if scene.relation is not None and scene.relation not in RELATIONS:
        raise PixcadeError(f"unknown relation {scene.relation!r} (choose from {', '.join(RELATIONS)})")
    if (scene.kind == "position") != (scene.region is not None):
        raise PixcadeError("a region is given exactly for position scenes")
    if scene.region is not None and scene.region not in REGIONS:
        raise PixcadeError(f"unknown region {scene.region!r} (choose from {', '.join(REGIONS)})")
