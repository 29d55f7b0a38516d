"""Conformance of the shapes domain to shared/SHAPES_SPEC.md.

The spec's numbers are restated here on purpose, so a change to the module's constants
can't silently move the domain away from the spec.
"""

import math

import numpy as np
import pytest
from PIL import Image

from pixcade.data import render as R
from pixcade.data import shapes as S
from pixcade.data.captions import caption, parse_caption
from pixcade.errors import PixcadeError

SPEC_COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (235, 205, 35),
    "green": (45, 160, 70),
    "cyan": (35, 185, 205),
    "blue": (40, 75, 215),
    "purple": (135, 60, 185),
    "black": (35, 35, 35),
}
SPEC_HELD_OUT = {("purple", "triangle"), ("yellow", "star"), ("cyan", "square"), ("orange", "diamond"), ("green", "circle")}


@pytest.fixture(scope="module")
def many():
    return S.sample_scenes(5000, seed=123)


def test_palette_background_and_held_out_are_the_spec():
    assert S.COLOURS == SPEC_COLOURS
    assert S.BACKGROUND == (235, 235, 235)
    assert set(S.HELD_OUT) == SPEC_HELD_OUT
    assert set(S.KINDS) == {"circle", "square", "triangle", "diamond", "star"}


def _incircle(sh):
    """Centre and radius of a disc inside the shape (from the spec's geometry)."""
    s = sh.s
    if sh.kind in ("circle", "square"):
        return sh.cx, sh.cy, s / 2
    if sh.kind == "diamond":
        return sh.cx, sh.cy, s / (2 * math.sqrt(2))
    if sh.kind == "triangle":  # base s, height s: inradius = area / semi-perimeter
        r = (s * s / 2) / ((s + 2 * math.hypot(s, s / 2)) / 2)
        return sh.cx, sh.cy + s / 2 - r, r
    # star: the inner pentagon's apothem
    return sh.cx, sh.cy, 0.4 * s / 2 * math.cos(math.pi / 5)


def test_interior_pixels_exact_colour_and_background_exact(many):
    n = 128
    centres = (np.arange(n) + 0.5) / n
    for scene in many[:60]:
        img = np.asarray(R.render(scene, n)).astype(int)
        far_from_all = np.ones((n, n), dtype=bool)
        for sh in scene.shapes:
            x, y, r = _incircle(sh)
            # pixels wholly inside that disc (the pixel's half-diagonal to spare)
            d = np.hypot(centres[None, :] - x, centres[:, None] - y)
            inner = d <= r - 0.75 / n
            assert inner.sum() >= 4
            assert (img[inner] == SPEC_COLOURS[sh.colour]).all(), (scene.caption, sh)
            x0, y0, x1, y1 = sh.box
            near = (
                (centres[None, :] > x0 - 1.0 / n) & (centres[None, :] < x1 + 1.0 / n)
                & (centres[:, None] > y0 - 1.0 / n) & (centres[:, None] < y1 + 1.0 / n)
            )
            far_from_all &= ~near
        assert (img[far_from_all] == (235, 235, 235)).all()


def test_rendered_area_matches_geometry():
    # the mean coverage of each kind equals its analytic area (anti-aliasing is unbiased)
    r = 0.15
    star = 5 * r * (0.4 * r) * math.sin(math.pi / 5)
    areas = {"circle": math.pi * r * r, "square": 4 * r * r, "triangle": 2 * r * r, "diamond": 2 * r * r, "star": star}
    for kind, area in areas.items():
        img = np.asarray(R.render([S.Shape("black", kind, "large", 0.5, 0.5, 2 * r)], 96)).astype(float)
        cover = (235 - img[..., 0]) / 200
        assert cover.mean() == pytest.approx(area, rel=0.01), kind


def test_renders_agree_across_resolutions():
    for scene in S.sample_scenes(6, seed=5):
        base = np.asarray(R.render(scene, 64)).astype(float)
        for res in (256, 1024):
            down = np.asarray(R.render(scene, res).resize((64, 64), Image.BOX)).astype(float)
            # 64 px uses 8x8 sub-samples: an axis-aligned edge moves coverage in steps of
            # 1/8, i.e. at most 200/8 levels for the highest-contrast colour (black)
            assert np.abs(down - base).max() <= 25
            assert np.abs(down - base).mean() <= 0.5


def test_render_sizes_and_bad_resolution():
    scene = S.sample_scenes(1, seed=0)[0]
    for res in (16, 33, 64):
        img = R.render(scene, res)
        assert img.size == (res, res) and img.mode == "RGB"
    for bad in (15, 0, 64.0, True):
        with pytest.raises(PixcadeError):
            R.render(scene, bad)


def test_sizes_margins_and_gaps(many):
    for scene in many:
        for sh in scene.shapes:
            lo, hi = {"small": (0.16, 0.20), "large": (0.28, 0.34)}[sh.size_class]
            assert lo <= sh.s <= hi
            assert sh.cx - sh.s / 2 >= 0.04 and sh.cx + sh.s / 2 <= 0.96
            assert sh.cy - sh.s / 2 >= 0.04 and sh.cy + sh.s / 2 <= 0.96
        for i, a in enumerate(scene.shapes):
            for b in scene.shapes[i + 1 :]:
                gap_x = abs(a.cx - b.cx) - (a.s + b.s) / 2
                gap_y = abs(a.cy - b.cy) - (a.s + b.s) / 2
                assert max(gap_x, gap_y) >= 0.02


def test_margin_rows_are_background(many):
    n = 100  # 0.04 of 100 px: the outer 4 pixel rows and columns hold no shape
    for scene in many[:40]:
        img = np.asarray(R.render(scene, n)).astype(int)
        ring = np.ones((n, n), dtype=bool)
        ring[4:-4, 4:-4] = False
        assert (img[ring] == 235).all()


def test_scene_kinds_counts_and_structure(many):
    kinds = {sc.kind for sc in many}
    assert kinds == {"single", "counting", "two_objects", "relation", "position"}
    assert {len(sc.shapes) for sc in many if sc.kind == "counting"} == {2, 3, 4}
    for sc in many:
        n = {"single": 1, "position": 1, "two_objects": 2, "relation": 2}.get(sc.kind)
        if n is not None:
            assert len(sc.shapes) == n
        if sc.kind == "counting":
            assert len({sh.pair for sh in sc.shapes}) == 1
            assert len({(sh.size_named, sh.size_class if sh.size_named else None) for sh in sc.shapes}) == 1
        if sc.kind in ("two_objects", "relation"):
            assert sc.shapes[0].pair != sc.shapes[1].pair


def test_relations_hold_with_training_margin(many):
    rel = [sc for sc in many if sc.kind == "relation"]
    assert {sc.relation for sc in rel} == {"left", "right", "above", "below"}
    for sc in rel:
        a, b = sc.shapes
        dx, dy = b.cx - a.cx, b.cy - a.cy
        main, cross = {"left": (dx, dy), "right": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[sc.relation]
        assert main >= 0.15 and main >= 1.5 * abs(cross), sc
        assert S.relation_holds(sc.relation, (a.cx, a.cy), (b.cx, b.cy), margin=True)


def test_relation_predicate_is_the_spec():
    assert S.relation_holds("left", (0.2, 0.5), (0.6, 0.5))
    assert not S.relation_holds("left", (0.6, 0.5), (0.2, 0.5))
    assert S.relation_holds("right", (0.6, 0.5), (0.2, 0.5))
    assert S.relation_holds("above", (0.5, 0.2), (0.5, 0.6))  # y grows downwards
    assert S.relation_holds("below", (0.5, 0.6), (0.5, 0.2))
    assert S.relation_holds("left", (0.2, 0.2), (0.5, 0.5))  # |dx| == |dy| counts
    assert not S.relation_holds("left", (0.2, 0.2), (0.4, 0.6))  # mostly above
    assert not S.relation_holds("left", (0.2, 0.2), (0.3, 0.25), margin=True)  # too close


def test_absolute_regions_with_margin(many):
    pos = [sc for sc in many if sc.kind == "position"]
    assert {sc.region for sc in pos} == set(S.REGIONS)
    for sc in pos:
        x, y = sc.shapes[0].cx, sc.shapes[0].cy
        if sc.region == "center":
            assert 0.35 <= x <= 0.65 and 0.35 <= y <= 0.65
        else:
            vertical, horizontal = sc.region.split()
            assert (x < 0.45) if horizontal == "left" else (x > 0.55)
            assert (y < 0.45) if vertical == "top" else (y > 0.55)


def test_held_out_pairs_absent_by_default_and_configurable(many):
    assert not any(sh.pair in SPEC_HELD_OUT for sc in many for sh in sc.shapes)
    assert not any(sc.held_out for sc in many)
    seen = {sh.pair for sc in many for sh in sc.shapes}
    assert len(seen) == 40 - 5
    everything = S.sample_scenes(2000, seed=9, exclude_pairs=())
    assert {sh.pair for sc in everything for sh in sc.shapes} == set(S.ALL_PAIRS)
    only = S.sample_scenes(300, seed=9, exclude_pairs=S.HELD_OUT, feature_pairs=S.HELD_OUT)
    for sc in only:
        assert sc.held_out
        if sc.kind in ("two_objects", "relation"):  # the other shape stays a seen pair
            assert sum(sh.pair in SPEC_HELD_OUT for sh in sc.shapes) == 1


def test_determinism():
    a = S.sample_scenes(50, seed=4)
    assert a == S.sample_scenes(50, seed=4)
    assert a != S.sample_scenes(50, seed=5)
    assert S.scene_for_index(4, 17) == a[17]  # scene i does not depend on the others
    rng1, rng2 = np.random.default_rng(8), np.random.default_rng(8)
    assert [S.sample_scene(rng1) for _ in range(5)] == [S.sample_scene(rng2) for _ in range(5)]
    assert np.array_equal(np.asarray(R.render(a[0], 64)), np.asarray(R.render(a[0], 64)))


def test_json_round_trip_and_validation(many):
    for sc in many[:200]:
        back = S.Scene.from_json(sc.to_json())
        assert back == sc and back.caption == sc.caption
    with pytest.raises(PixcadeError):
        S.Scene.from_json("{not json")
    bad = many[0].to_dict()
    bad["shapes"][0]["colour"] = "pink"
    with pytest.raises(PixcadeError, match="pink"):
        S.Scene.from_dict(bad)
    with pytest.raises(PixcadeError):
        S.sample_scene(np.random.default_rng(0), "spiral")


def _scene(kind, pairs, relation=None, region=None, sizes=None):
    sizes = sizes or [None] * len(pairs)
    shapes = tuple(
        S.Shape(c, k, sz or "small", 0.2 + 0.3 * i, 0.5, 0.18, size_named=sz is not None)
        for i, ((c, k), sz) in enumerate(zip(pairs, sizes))
    )
    return S.Scene(kind, shapes, relation=relation, region=region)


def test_spec_caption_forms():
    assert caption(_scene("single", [("red", "circle")])) == "a red circle"
    assert caption(_scene("single", [("blue", "star")], sizes=["small"])) == "a small blue star"
    assert caption(_scene("single", [("orange", "star")])) == "an orange star"
    assert caption(_scene("counting", [("green", "triangle")] * 3)) == "three green triangles"
    two = [("red", "circle"), ("blue", "square")]
    assert caption(_scene("two_objects", two)) == "a red circle and a blue square"
    assert caption(_scene("relation", two, relation="left")) == "a red circle to the left of a blue square"
    assert caption(_scene("relation", two, relation="above")) == "a red circle above a blue square"
    star = [("yellow", "star")]
    assert caption(_scene("position", star, region="top left")) == "a yellow star in the top left corner"
    assert caption(_scene("position", star, region="center")) == "a yellow star in the center"


def test_random_captions_name_what_the_scene_holds(many):
    numbers = {2: ("two", "2"), 3: ("three", "3"), 4: ("four", "4")}
    size_words = {"small": ("small",), "large": ("large", "big")}
    templates = set()
    for sc in many[:1000]:
        text = sc.caption
        assert text == text.lower() and text.strip() == text
        for sh in sc.shapes:
            assert sh.colour in text and sh.kind in text
            if sh.size_named:
                assert any(w in text.split() for w in size_words[sh.size_class])
        if not any(sh.size_named for sh in sc.shapes):
            assert not {"small", "large", "big"} & set(text.split())
        if sc.kind == "counting":
            assert any(w in text.split() for w in numbers[len(sc.shapes)]) and sc.shapes[0].kind + "s" in text
        if sc.kind == "relation":
            a, b = sc.shapes
            assert text.index(f"{a.colour} {a.kind}") < text.index(f"{b.colour} {b.kind}")
            words = {"left": ("left of",), "right": ("right of",), "above": ("above",), "below": ("below", "beneath")}
            assert any(w in text for w in words[sc.relation])
        if sc.kind == "position":
            head = {"top left": ("top left", "upper left"), "top right": ("top right", "upper right"),
                    "bottom left": ("bottom left", "lower left"), "bottom right": ("bottom right", "lower right"),
                    "center": ("center", "centre", "middle")}[sc.region]
            assert any(w in text for w in head)
        templates.add(text.split()[0])
    assert {"a", "there", "an"} <= templates  # phrasings vary


def test_evaluation_prompt_set():
    prompts = S.evaluation_prompts(300, held_out_fraction=1 / 3, seed=0)
    assert len(prompts) == 300
    assert sum(sc.held_out for sc in prompts) == 100
    for kind in S.SCENE_KINDS:
        of_kind = [sc for sc in prompts if sc.kind == kind]
        assert len(of_kind) == 60
        assert 0 < sum(sc.held_out for sc in of_kind) < 60
    assert prompts == S.evaluation_prompts(300, held_out_fraction=1 / 3, seed=0)
    with pytest.raises(PixcadeError):
        S.evaluation_prompts(0)


def _meaning(sc):
    named = [(sh.colour, sh.kind, sh.size_class if sh.size_named else None) for sh in sc.shapes]
    return sc.kind, named, sc.relation, sc.region


def test_captions_parse_back_to_their_scene(many):
    for sc in many[:2000] + S.sample_scenes(500, seed=3, exclude_pairs=()):
        assert _meaning(parse_caption(sc.caption)) == _meaning(sc), sc.caption
    parsed = parse_caption("A picture of 3 big red stars.")
    assert _meaning(parsed) == ("counting", [("red", "star", "large")] * 3, None, None)
    for bad in ("a pink circle", "hello", "a red circle and", "two red circle", "a red circle and a red circle"):
        with pytest.raises(PixcadeError, match="not a shapes caption"):
            parse_caption(bad)


def test_size_named_probability():
    never = S.sample_scenes(200, seed=2, size_named_prob=0.0)
    always = S.sample_scenes(200, seed=2, size_named_prob=1.0)
    assert not any(sh.size_named for sc in never for sh in sc.shapes)
    assert all(sh.size_named for sc in always for sh in sc.shapes)
    assert all({"small", "large", "big"} & set(sc.caption.split()) for sc in always)


def test_kind_weights_set_the_mix_of_scene_kinds():
    n = 3000
    scenes = S.sample_scenes(n, seed=5, kind_weights={"relation": 3, "counting": 1})
    counts = {k: sum(sc.kind == k for sc in scenes) for k in S.SCENE_KINDS}
    assert counts["single"] == counts["two_objects"] == counts["position"] == 0
    # binomial(3000, 0.75): sd 24, so 4 sd either side of 2250
    assert abs(counts["relation"] - 0.75 * n) < 4 * math.sqrt(n * 0.75 * 0.25)
    assert counts["relation"] + counts["counting"] == n
    # a weighted scene is still a valid scene of its kind (held-out pairs excluded)
    for sc in scenes[:200]:
        S.validate(sc)
        assert not sc.held_out
    assert np.allclose(S.kind_probabilities({"single": 2, "position": 2}), [0.5, 0, 0, 0, 0.5])


@pytest.mark.parametrize(
    "weights, match",
    [({"relations": 1}, "unknown scene kind 'relations'"), ({"single": -1, "relation": 2}, "non-negative"),
     ({"single": 0}, "positive weight"), ({"single": float("nan")}, "finite")],
)
def test_bad_kind_weights_are_named(weights, match):
    with pytest.raises(PixcadeError, match=match):
        S.sample_scene(np.random.default_rng(0), kind_weights=weights)
