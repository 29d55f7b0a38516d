"""The shapes scorer: finds shapes in an image and judges it against its scene's caption.

Follows the Scoring section of `shared/SHAPES_SPEC.md`:
- a pixel belongs to a shape when it lies nearer to a palette colour than to the
  background. Anti-aliased edges are blends of a colour with the background, so a pixel is
  compared with each colour's blend line (background -> colour), not its end point: the
  nearest line gives the colour, and the position along it says whether the pixel is more
  shape than background. A plain nearest-end-point rule would call a red edge orange and a
  black edge purple, leaving fringes of false colour around every shape;
- shapes are the connected regions of one colour no smaller than a third of the smallest
  small triangle's area at the image's resolution;
- the kind comes from geometry: how much of its bounding box a region fills, its solidity
  (area over convex-hull area: low only for the star), and where its mass sits vertically
  (low for the apex-up triangle, centred for the diamond, which fills the box alike).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from pixcade.data.shapes import (
    BACKGROUND,
    COLOURS,
    HELD_OUT,
    SCENE_KINDS,
    SIZE_RANGES,
    SMALL_LARGE_SPLIT,
    Scene,
    parse_caption,
    region_holds,
    relation_holds,
)
from pixcade.errors import PixcadeError

_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _NAMES], dtype=np.float32)
_BG = np.array(BACKGROUND, dtype=np.float32)
# A region whose typical colour is this far from every palette colour is no palette colour
# (half the distance orange-yellow, the closest two, would be too strict for model output).
COLOUR_TOLERANCE = 80.0
# Geometry of each kind, measured in the units of `_features`: (fill, solidity, mass_y).
PROTOTYPES: dict[str, tuple[float, float, float]] = {
    "circle": (np.pi / 4, 1.0, 0.5),
    "square": (1.0, 1.0, 0.5),
    "triangle": (0.5, 1.0, 2 / 3),
    "diamond": (0.5, 1.0, 0.5),
    # A star of outer radius R: area 5 R r sin 36deg with r = 0.4 R, box 2R sin 72deg x
    # R (1 + cos 36deg), hull the pentagon of its points, centre R below the top.
    "star": (0.342, 0.494, 1 / (1 + np.cos(np.pi / 5))),
}
# Per-feature scale of the distance to a prototype: mass_y differs by only 1/6 between
# triangle and diamond, so it weighs more.
_FEATURE_SCALE = np.array([1.0, 1.0, 0.5])
MAX_PROTOTYPE_DISTANCE = 0.25  # farther from every prototype: not one of our shapes
MAX_ASPECT = 1.5  # shapes are drawn in a square box; a long region is none of them


@dataclass
class Detected:
    colour: str  # a palette name, or "unknown"
    kind: str  # a shape name, or "unknown"
    cx: float  # centre of the bounding box, normalised
    cy: float
    size: float  # longer side of the bounding box, as a fraction of the canvas
    area: int  # pixels
    features: dict[str, float] = field(default_factory=dict)

    @property
    def size_class(self) -> str:
        return "small" if self.size < SMALL_LARGE_SPLIT else "large"

    @property
    def pair(self) -> tuple[str, str]:
        return (self.colour, self.kind)

    def describe(self) -> str:
        return f"{self.size_class} {self.colour} {self.kind} at ({self.cx:.2f}, {self.cy:.2f})"


@dataclass
class Judgement:
    passed: bool
    reason: str


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise PixcadeError(f"expected an RGB image of shape [H, W, 3], got {arr.shape}")
    return arr.astype(np.float32)


def min_area(height: int, width: int) -> float:
    """A third of the smallest small triangle's area (s = 0.16: area s^2 / 2), in pixels."""
    s = SIZE_RANGES["small"][0]
    return (s * s / 2) / 3 * height * width


def _classify_pixels(arr: np.ndarray) -> np.ndarray:
    """Palette index per pixel, -1 for background: the nearest blend line, if past halfway."""
    offset = (arr - _BG).reshape(-1, 3)
    direction = _PALETTE - _BG  # [C, 3]
    norm2 = np.sum(direction**2, axis=1)
    labels = np.full(len(offset), -1, dtype=np.int64)
    # Past halfway along a line means offset . d >= |d|^2 / 2, so |offset| >= |d| / 2:
    # pixels nearer the background than that are background whatever the colour.
    offset_norm2 = np.sum(offset**2, axis=1)
    todo = np.flatnonzero(offset_norm2 >= norm2.min() / 4)
    o = offset[todo]
    dot = o @ direction.T  # [P, C]
    alpha = np.clip(dot / norm2, 0.0, 1.0)
    # |offset - alpha * direction|^2, expanded
    residual = offset_norm2[todo, None] - 2 * alpha * dot + alpha**2 * norm2
    best = np.argmin(residual, axis=1)
    best_alpha = alpha[np.arange(len(todo)), best]
    labels[todo] = np.where(best_alpha >= 0.5, best, -1)
    return labels.reshape(arr.shape[:2])


def _features(mask: np.ndarray) -> dict[str, float]:
    """fill, solidity, mass_y and aspect of a region given as a tight boolean crop."""
    h, w = mask.shape
    area = float(mask.sum())
    rows = np.nonzero(mask)[0]
    # Hull of the pixels' corners, so a solid region has solidity near 1 at any size.
    edge = mask & ~ndimage.binary_erosion(mask)
    ys, xs = np.nonzero(edge)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)])
    try:
        hull_area = ConvexHull(corners).volume
    except QhullError:  # degenerate: a line of pixels
        hull_area = area
    return {
        "fill": area / (w * h),
        "solidity": area / max(hull_area, area),
        "mass_y": (rows.mean() + 0.5) / h,
        "aspect": w / h,
    }


def _kind(features: dict[str, float]) -> str:
    if not 1 / MAX_ASPECT <= features["aspect"] <= MAX_ASPECT:
        return "unknown"
    f = np.array([features["fill"], features["solidity"], features["mass_y"]])
    best, best_d = "unknown", np.inf
    for kind, proto in PROTOTYPES.items():
        d = float(np.linalg.norm((f - np.array(proto)) / _FEATURE_SCALE))
        if d < best_d:
            best, best_d = kind, d
    return best if best_d <= MAX_PROTOTYPE_DISTANCE else "unknown"


def detect(image: Image.Image | np.ndarray) -> list[Detected]:
    """The shapes in `image`, top to bottom then left to right."""
    arr = _as_array(image)
    height, width = arr.shape[:2]
    labels = _classify_pixels(arr)
    smallest = min_area(height, width)
    found: list[Detected] = []
    for ci in np.unique(labels[labels >= 0]):
        name = _NAMES[ci]
        regions, _ = ndimage.label(labels == ci, structure=np.ones((3, 3), dtype=bool))
        for k, sl in enumerate(ndimage.find_objects(regions), start=1):
            mask = ndimage.binary_fill_holes(regions[sl] == k)
            area = int(mask.sum())
            if area < smallest:
                continue
            # The colour is read inside the anti-aliased rim. A region that is all rim
            # (a tangle of thin strands, as in noisy model output) has no core to read:
            # its colour is unknown, which fails the image.
            core = arr[sl][ndimage.binary_erosion(mask) if area > 9 else mask]
            colour = "unknown"
            if len(core) and np.linalg.norm(np.median(core, axis=0) - _PALETTE[ci]) <= COLOUR_TOLERANCE:
                colour = name
            feats = _features(mask)
            y0, y1 = sl[0].start, sl[0].stop
            x0, x1 = sl[1].start, sl[1].stop
            found.append(
                Detected(
                    colour=colour,
                    kind=_kind(feats),
                    cx=(x0 + x1) / 2 / width,
                    cy=(y0 + y1) / 2 / height,
                    size=max((x1 - x0) / width, (y1 - y0) / height),
                    area=area,
                    features={k: round(float(v), 4) for k, v in feats.items()},
                )
            )
    found.sort(key=lambda d: (round(d.cy, 2), d.cx))
    return found


def _name(colour: str, kind: str, size: str | None = None) -> str:
    return " ".join(w for w in (size, colour, kind) if w)


def judge_detections(found: Sequence[Detected], scene: Scene) -> Judgement:
    """Whether these detections satisfy `scene`'s caption (and nothing else is there)."""
    odd = [d for d in found if d.colour == "unknown" or d.kind == "unknown"]
    if odd:
        return Judgement(False, "unrecognised shape: " + "; ".join(d.describe() for d in odd))
    expected = scene.shapes
    if len(found) != len(expected):
        listing = ", ".join(d.describe() for d in found) or "nothing"
        return Judgement(False, f"expected {len(expected)} shape(s), found {len(found)}: {listing}")
    want = sorted(sh.pair for sh in expected)
    got = sorted(d.pair for d in found)
    if want != got:
        return Judgement(
            False,
            f"expected {', '.join(_name(*p) for p in want)}; found {', '.join(_name(*p) for p in got)}",
        )
    for pair in set(want):
        named = [sh.size_class for sh in expected if sh.pair == pair and sh.size_named]
        drawn = [d.size_class for d in found if d.pair == pair]
        for size in ("small", "large"):
            if named.count(size) > drawn.count(size):
                return Judgement(False, f"expected {named.count(size)} {_name(*pair, size)}, found {drawn.count(size)}")
    if scene.kind == "relation":
        a = next(d for d in found if d.pair == expected[0].pair)
        b = next(d for d in found if d.pair == expected[1].pair)
        if not relation_holds(scene.relation, (a.cx, a.cy), (b.cx, b.cy)):
            return Judgement(False, f"{a.describe()} is not {scene.relation} {b.describe()}")
    if scene.kind == "position":
        d = found[0]
        if not region_holds(scene.region, (d.cx, d.cy)):
            return Judgement(False, f"{d.describe()} is not in the {scene.region}")
    return Judgement(True, "ok")


def judge(image: Image.Image | np.ndarray, scene: Scene | str) -> Judgement:
    """Whether `image` shows what `scene` (or a caption of ours, parsed) describes."""
    if isinstance(scene, str):
        scene = parse_caption(scene)
    return judge_detections(detect(image), scene)


def _tally(passed: Sequence[bool]) -> dict[str, Any]:
    n = len(passed)
    k = int(sum(passed))
    return {"n": n, "passed": k, "accuracy": (k / n) if n else None}


def score(images: Sequence[Image.Image | np.ndarray], scenes: Sequence[Scene | str]) -> dict[str, Any]:
    """Accuracy overall, per scene kind, and for seen vs held-out pairs (a JSON-able dict).

    `scenes` may be captions of ours instead (parsed). `results` lists every image's
    verdict, so failures can be looked at.
    """
    if len(images) != len(scenes):
        raise PixcadeError(f"{len(images)} images for {len(scenes)} scenes")
    scenes = [parse_caption(sc) if isinstance(sc, str) else sc for sc in scenes]
    results = []
    for i, (image, scene) in enumerate(zip(images, scenes)):
        verdict = judge(image, scene)
        results.append(
            {
                "index": i,
                "caption": scene.caption,
                "kind": scene.kind,
                "held_out": scene.held_out,
                "passed": verdict.passed,
                "reason": verdict.reason,
            }
        )
    ok = [r["passed"] for r in results]
    return {
        "overall": _tally(ok),
        "by_kind": {
            kind: _tally([r["passed"] for r in results if r["kind"] == kind])
            for kind in SCENE_KINDS
            if any(r["kind"] == kind for r in results)
        },
        "seen": _tally([r["passed"] for r in results if not r["held_out"]]),
        "held_out": _tally([r["passed"] for r in results if r["held_out"]]),
        "held_out_pairs": sorted(" ".join(p) for p in HELD_OUT),
        "results": results,
    }


def markdown_table(report: dict[str, Any]) -> str:
    """The report's accuracies as a Markdown table."""

    def row(name: str, t: dict[str, Any]) -> str:
        acc = "-" if t["accuracy"] is None else f"{t['accuracy']:.3f}"
        return f"| {name} | {t['n']} | {t['passed']} | {acc} |"

    lines = ["| subset | prompts | passed | accuracy |", "| --- | ---: | ---: | ---: |"]
    lines += [row(kind, t) for kind, t in report["by_kind"].items()]
    lines += [row("seen pairs", report["seen"]), row("held-out pairs", report["held_out"])]
    lines.append(row("**overall**", report["overall"]))
    return "\n".join(lines)

