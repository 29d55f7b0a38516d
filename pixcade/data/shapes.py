"""The shapes domain of `shared/SHAPES_SPEC.md`: scenes (the model in `pixcade.data.scenes`,
captions in `pixcade.data.captions`) and their sampling (`pixcade.data.render` draws them).

A `Scene` lives in normalised coordinates (x right, y down, both in [0, 1]) and carries
its caption, so any image drawn for it can be checked against it (`pixcade.eval.shapes`).
Everything random comes from a numpy Generator passed in, so a seed fixes a dataset.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Collection, Mapping

import numpy as np

from pixcade.data.captions import caption, parse_caption  # noqa: F401  (part of this module's API)
from pixcade.data.scenes import (  # noqa: F401  (the scene model is part of this module's API)
    COLOURS,
    COUNTS,
    HELD_OUT,
    KINDS,
    REGIONS,
    RELATIONS,
    SCENE_KINDS,
    SIZE_RANGES,
    Scene,
    Shape,
    validate,
)
from pixcade.errors import PixcadeError

BACKGROUND: tuple[int, int, int] = (235, 235, 235)
# A found shape is called small when its bounding-box side is under this (spec, Sizes).
SMALL_LARGE_SPLIT = 0.24
MARGIN = 0.04  # every shape stays this far inside the canvas
GAP = 0.02  # bounding boxes of different shapes are at least this far apart

ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, k) for c in COLOURS for k in KINDS)

# Training scenes satisfy their relation / region with these margins (spec).
RELATION_MIN_OFFSET = 0.15
RELATION_MIN_RATIO = 1.5
REGION_MARGIN = 0.05
CENTER_RANGE = (0.3, 0.7)


# --- the spec's predicates, shared with the scorer ------------------------------------


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float], margin: bool = False) -> bool:
    """Whether centre `a` is <relation> centre `b`; `margin` adds the training margin."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    main, cross = {"left": (dx, dy), "right": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
    if margin:
        return main >= RELATION_MIN_OFFSET and main >= RELATION_MIN_RATIO * abs(cross)
    return main > 0 and main >= abs(cross)


def region_bounds(region: str, margin: float = 0.0) -> tuple[float, float, float, float]:
    """(x_lo, x_hi, y_lo, y_hi) an in-region centre lies strictly within, shrunk by `margin`."""
    if region == "center":
        lo, hi = CENTER_RANGE
        return (lo + margin, hi - margin, lo + margin, hi - margin)
    vertical, horizontal = region.split()
    x = (0.0, 0.5 - margin) if horizontal == "left" else (0.5 + margin, 1.0)
    y = (0.0, 0.5 - margin) if vertical == "top" else (0.5 + margin, 1.0)
    return (*x, *y)


def region_holds(region: str, c: tuple[float, float], margin: float = 0.0) -> bool:
    x_lo, x_hi, y_lo, y_hi = region_bounds(region, margin)
    if region == "center":  # the spec's centre region is closed: within [0.3, 0.7]
        return x_lo <= c[0] <= x_hi and y_lo <= c[1] <= y_hi
    return x_lo < c[0] < x_hi and y_lo < c[1] < y_hi


def boxes_apart(a: Shape, b: Shape, gap: float = GAP) -> bool:
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    return max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1) >= gap


# --- sampling -----------------------------------------------------------------------------


def _allowed(exclude_pairs: Collection[tuple[str, str]]) -> list[tuple[str, str]]:
    pairs = [p for p in ALL_PAIRS if p not in set(exclude_pairs)]
    if not pairs:
        raise PixcadeError("every colour-shape pair is excluded")
    return pairs


def _pick(rng: np.random.Generator, pairs: list[tuple[str, str]]) -> tuple[str, str]:
    return pairs[int(rng.integers(len(pairs)))]


def _place(
    rng: np.random.Generator,
    sizes: np.ndarray,
    relation: str | None,
    region: str | None,
    batch: int = 512,
) -> np.ndarray | None:
    """Centres [n, 2] for boxes of these sizes meeting margin, gap, relation and region, or None.

    Draws a batch of candidate layouts at once and keeps the first that passes, so even
    four large shapes (which only fit near a 2x2 layout) are found quickly.
    """
    n = len(sizes)
    lo = MARGIN + sizes / 2
    hi = 1 - MARGIN - sizes / 2
    lo = np.stack([lo, lo], axis=1)
    hi = np.stack([hi, hi], axis=1)
    if region is not None:
        x_lo, x_hi, y_lo, y_hi = region_bounds(region, REGION_MARGIN)
        lo = np.maximum(lo, [[x_lo, y_lo]])
        hi = np.minimum(hi, [[x_hi, y_hi]])
        # Keep the open region borders open: nudge the upper bound below them.
        hi = hi - 1e-6
    if np.any(hi <= lo):
        return None
    c = lo + (hi - lo) * rng.random((batch, n, 2))
    ok = np.ones(batch, dtype=bool)
    for i in range(n):
        for j in range(i + 1, n):
            d = np.abs(c[:, i] - c[:, j]) - (sizes[i] + sizes[j]) / 2
            ok &= d.max(axis=1) >= GAP
    if relation is not None:
        dx = c[:, 1, 0] - c[:, 0, 0]
        dy = c[:, 1, 1] - c[:, 0, 1]
        main, cross = {"left": (dx, dy), "right": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
        ok &= (main >= RELATION_MIN_OFFSET) & (main >= RELATION_MIN_RATIO * np.abs(cross))
    hits = np.flatnonzero(ok)
    return c[hits[0]] if len(hits) else None


def kind_probabilities(kind_weights: Mapping[str, float]) -> np.ndarray:
    """Probabilities over SCENE_KINDS (in that order) from relative weights by kind name."""
    unknown = sorted(set(kind_weights) - set(SCENE_KINDS))
    if unknown:
        raise PixcadeError(f"unknown scene kind {unknown[0]!r} in kind weights (choose from {', '.join(SCENE_KINDS)})")
    w = np.array([float(kind_weights.get(k, 0.0)) for k in SCENE_KINDS])
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise PixcadeError(f"kind weights must be finite and non-negative, got {dict(kind_weights)}")
    if w.sum() <= 0:
        raise PixcadeError("kind weights must give at least one scene kind a positive weight")
    return w / w.sum()


def sample_scene(
    rng: np.random.Generator,
    kind: str | None = None,
    *,
    exclude_pairs: Collection[tuple[str, str]] = HELD_OUT,
    feature_pairs: Collection[tuple[str, str]] | None = None,
    size_named_prob: float = 0.4,
    kind_weights: Mapping[str, float] | None = None,
) -> Scene:
    """One random scene of `kind` (random kind if None), with its caption.

    `exclude_pairs` never appear (default: the held-out pairs; pass () for all pairs).
    `feature_pairs`, if given, forces one shape's pair to come from it (e.g. HELD_OUT for
    the held-out half of an evaluation set); it overrides `exclude_pairs` for that shape.
    `size_named_prob`: how often a caption names a shape's size.
    `kind_weights`: relative frequency of each scene kind when `kind` is None (kinds left
    out are never drawn); None draws every kind equally often.
    """
    if kind is None:
        if kind_weights is None:
            # Kept apart from the weighted draw so datasets written before weights existed
            # are reproduced bit for bit.
            kind = SCENE_KINDS[int(rng.integers(len(SCENE_KINDS)))]
        else:
            p = kind_probabilities(kind_weights)
            kind = SCENE_KINDS[int(rng.choice(len(SCENE_KINDS), p=p))]
    if kind not in SCENE_KINDS:
        raise PixcadeError(f"unknown scene kind {kind!r} (choose from {', '.join(SCENE_KINDS)})")
    allowed = _allowed(exclude_pairs)
    featured = sorted(feature_pairs) if feature_pairs is not None else None
    if featured is not None and not featured:
        raise PixcadeError("feature_pairs is empty")

    n = {"single": 1, "position": 1, "two_objects": 2, "relation": 2}.get(kind) or int(rng.choice(COUNTS))
    if kind == "counting":
        pairs = [_pick(rng, featured or allowed)] * n
    elif n == 2:
        first = _pick(rng, featured or allowed)
        second = _pick(rng, [p for p in allowed if p != first])
        pairs = [first, second]
        if featured is not None and rng.random() < 0.5:  # the featured pair may be named second
            pairs.reverse()
    else:
        pairs = [_pick(rng, featured or allowed)]
    relation = RELATIONS[int(rng.integers(len(RELATIONS)))] if kind == "relation" else None
    region = REGIONS[int(rng.integers(len(REGIONS)))] if kind == "position" else None

    # A counting caption names one size for all its shapes, so they are drawn alike then.
    shared_named = rng.random() < size_named_prob
    while True:
        if kind == "counting":
            named = [shared_named] * n
            shared_class = "small" if rng.random() < 0.5 else "large"
            classes = [shared_class if shared_named else ("small" if rng.random() < 0.5 else "large") for _ in range(n)]
        else:
            named = [bool(rng.random() < size_named_prob) for _ in range(n)]
            classes = ["small" if rng.random() < 0.5 else "large" for _ in range(n)]
        sizes = np.array([rng.uniform(*SIZE_RANGES[c]) for c in classes])
        centres = _place(rng, sizes, relation, region)
        if centres is not None:
            break
    shapes = tuple(
        Shape(col, k, cls, float(cx), float(cy), float(s), bool(nm))
        for (col, k), cls, (cx, cy), s, nm in zip(pairs, classes, centres, sizes, named)
    )
    scene = Scene(kind=kind, shapes=shapes, relation=relation, region=region)
    return replace(scene, caption=caption(scene, rng))


def scene_for_index(seed: int, index: int, **kwargs: Any) -> Scene:
    """Scene `index` of the dataset with this seed: independent of how many came before."""
    return sample_scene(np.random.default_rng([seed, index]), **kwargs)


def sample_scenes(n: int, seed: int = 0, **kwargs: Any) -> list[Scene]:
    return [scene_for_index(seed, i, **kwargs) for i in range(n)]


def evaluation_prompts(n: int = 300, held_out_fraction: float = 1 / 3, seed: int = 1234) -> list[Scene]:
    """An evaluation prompt set: `n` scenes cycling through every scene kind, of which
    round(n * held_out_fraction) name a held-out pair (the rest only seen pairs).

    The kinds cycle so that each kind gets its share of held-out prompts.
    """
    if n < 1:
        raise PixcadeError(f"the prompt set needs at least one prompt, got n={n}")
    if not 0.0 <= held_out_fraction <= 1.0:
        raise PixcadeError(f"held_out_fraction must be in [0, 1], got {held_out_fraction}")
    n_held = int(round(n * held_out_fraction))
    rng = np.random.default_rng(seed)
    held_slots = set(rng.permutation(n)[:n_held].tolist())
    scenes = []
    for i in range(n):
        kind = SCENE_KINDS[i % len(SCENE_KINDS)]
        sub = np.random.default_rng([seed, i])
        if i in held_slots:
            scenes.append(sample_scene(sub, kind, exclude_pairs=HELD_OUT, feature_pairs=HELD_OUT))
        else:
            scenes.append(sample_scene(sub, kind, exclude_pairs=HELD_OUT))
    return scenes
