"""The shapes scorer: near-perfect on true renders, and able to fail on wrong ones."""

import dataclasses
import json
import warnings

import numpy as np
import pytest

from pixcade.data import render as R
from pixcade.data import shapes as S
from pixcade.eval import shapes as E
from pixcade.errors import PixcadeError


@pytest.fixture(scope="module")
def scenes():
    # held-out pairs included: the scorer must see every colour-shape pair
    return S.sample_scenes(300, seed=2024, exclude_pairs=())


def test_every_colour_kind_and_size_is_found_as_itself():
    for colour in S.COLOURS:
        for kind in S.KINDS:
            for size_class, s in (("small", 0.16), ("large", 0.34)):
                sh = S.Shape(colour, kind, size_class, 0.43, 0.57, s)
                found = E.detect(R.render([sh], 128))
                assert len(found) == 1, (colour, kind, size_class, found)
                d = found[0]
                assert (d.colour, d.kind, d.size_class) == (colour, kind, size_class)
                # the bounding-box centre; a star's box sits a little above its centre
                assert abs(d.cx - sh.cx) < 0.01 and abs(d.cy - sh.cy) < 0.02


@pytest.mark.parametrize("res,count", [(128, 300), (256, 100)])
def test_true_renders_pass(scenes, res, count):
    chosen = scenes[:count]
    report = E.score([R.render(sc, res) for sc in chosen], chosen)
    failures = [r for r in report["results"] if not r["passed"]]
    assert report["overall"]["accuracy"] >= 0.99, failures
    assert set(report["by_kind"]) == set(S.SCENE_KINDS)
    assert report["held_out"]["n"] > 0 and report["seen"]["n"] > 0


def _other(options, current, rng):
    return [o for o in options if o != current][int(rng.integers(len(options) - 1))]


def _wrong_colour(sc, rng):
    i = int(rng.integers(len(sc.shapes)))
    sh = sc.shapes[i]
    return _replace_shape(sc, i, colour=_other(list(S.COLOURS), sh.colour, rng))


def _wrong_kind(sc, rng):
    i = int(rng.integers(len(sc.shapes)))
    return _replace_shape(sc, i, kind=_other(list(S.KINDS), sc.shapes[i].kind, rng))


def _replace_shape(sc, i, **changes):
    shapes = list(sc.shapes)
    shapes[i] = dataclasses.replace(shapes[i], **changes)
    return tuple(shapes)


def _one_fewer(sc, rng):
    return sc.shapes[:-1]


def _one_more(sc, rng):
    """Adds a small shape of a pair the scene already has, somewhere free (None: no room)."""
    for _ in range(10_000):
        s = 0.17
        cx, cy = rng.uniform(0.04 + s / 2, 0.96 - s / 2, size=2)
        extra = dataclasses.replace(sc.shapes[0], cx=float(cx), cy=float(cy), s=s, size_class="small")
        if all(S.boxes_apart(extra, sh) for sh in sc.shapes):
            return sc.shapes + (extra,)
    return None


def _mirrored(sc, rng):
    """Relation scenes reflected across the relation's axis: the relation reverses."""
    horizontal = sc.relation in ("left", "right")
    return tuple(
        dataclasses.replace(sh, cx=1 - sh.cx) if horizontal else dataclasses.replace(sh, cy=1 - sh.cy)
        for sh in sc.shapes
    )


def _elsewhere(sc, rng):
    """Position scenes moved to the opposite corner (a corner, for the center)."""
    sh = sc.shapes[0]
    if sc.region == "center":
        corner = 0.04 + sh.s / 2
        return (dataclasses.replace(sh, cx=corner, cy=corner),)
    return (dataclasses.replace(sh, cx=1 - sh.cx, cy=1 - sh.cy),)


def _wrong_size(sc, rng):
    sh = sc.shapes[0]
    other = "large" if sh.size_class == "small" else "small"
    s = sum(S.SIZE_RANGES[other]) / 2
    c = lambda v: float(np.clip(v, 0.04 + s / 2, 0.96 - s / 2))  # noqa: E731
    return (dataclasses.replace(sh, size_class=other, s=s, cx=c(sh.cx), cy=c(sh.cy)),)


WRONG = {
    "colour": (_wrong_colour, lambda sc: True),
    "shape": (_wrong_kind, lambda sc: True),
    "one fewer": (_one_fewer, lambda sc: True),
    "one more": (_one_more, lambda sc: sc.kind != "counting" or len(sc.shapes) < 4),
    "relation": (_mirrored, lambda sc: sc.kind == "relation"),
    "position": (_elsewhere, lambda sc: sc.kind == "position"),
    "size": (_wrong_size, lambda sc: len(sc.shapes) == 1 and sc.shapes[0].size_named),
}


@pytest.mark.parametrize("name", list(WRONG))
def test_wrong_renders_fail(scenes, name):
    make, applies = WRONG[name]
    rng = np.random.default_rng(7)
    pool = S.sample_scenes(600, seed=99, exclude_pairs=()) if name in ("relation", "position", "size") else scenes
    cases = []
    for sc in (sc for sc in pool if applies(sc)):
        wrong = make(sc, rng)
        if wrong is not None:  # None: no room for an extra shape in this scene
            cases.append((sc, wrong))
        if len(cases) == 50:
            break
    assert len(cases) >= 20
    chosen = [sc for sc, _ in cases]
    passed = []
    for sc, wrong in cases:
        assert R.render(sc, 128) != R.render(wrong, 128)
        passed.append(E.judge(R.render(wrong, 128), sc).passed)
    assert sum(passed) == 0, [sc.caption for sc, p in zip(chosen, passed) if p]


def test_blank_unknown_colour_and_unknown_shape_fail():
    sc = S.Scene("single", (S.Shape("red", "square", "large", 0.5, 0.5, 0.3),), caption="a red square")
    blank = np.full((128, 128, 3), 235, dtype=np.uint8)
    assert not E.judge(blank, sc).passed
    red = np.asarray(R.render(sc, 128))
    interior = (red == (220, 40, 40)).all(-1)
    pale = red.copy()
    pale[interior] = (255, 120, 200)  # pink: nearer the background than any colour
    assert not E.judge(pale, sc).passed
    brown = red.copy()
    brown[interior] = (120, 70, 20)  # far from every palette colour
    verdict = E.judge(brown, sc)
    assert not verdict.passed and "unrecognised" in verdict.reason
    bar = blank.copy()
    bar[50:70, 20:108] = (220, 40, 40)  # a red bar, 4:1
    verdict = E.judge(bar, sc)
    assert not verdict.passed and "unrecognised" in verdict.reason
    square = blank.copy()
    square[40:80, 40:80] = (220, 40, 40)
    assert E.judge(square, sc).passed  # ... while a plain square passes


def test_noise_fails_without_numpy_warnings():
    # Uniform noise, like an untrained model's output: speckled regions of every colour,
    # some (seed 4) all anti-aliasing rim with no core to read a colour from.
    for seed in range(6):
        noise = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            verdict = E.judge(noise, "a red circle")
        assert not verdict.passed


def test_regions_below_a_third_of_the_smallest_triangle_are_ignored():
    n = 128
    side = np.sqrt(E.min_area(n, n))  # a square of exactly the minimum area, in pixels
    assert side * side == pytest.approx((0.16**2 / 2) / 3 * n * n)
    for scale, expected in ((0.9, 0), (1.15, 1)):
        s = side * scale / n
        sh = S.Shape("blue", "square", "small", 0.5, 0.5, s)
        assert len(E.detect(R.render([sh], n))) == expected


def test_array_input_and_unequal_length():
    sc = S.sample_scenes(1, seed=3)[0]
    img = R.render(sc, 128)
    assert E.detect(np.asarray(img)) == E.detect(img)
    with pytest.raises(PixcadeError):
        E.score([img], [sc, sc])
    with pytest.raises(PixcadeError):
        E.detect(np.zeros((8, 8)))


def test_report_counts_json_and_markdown(scenes):
    chosen = [sc for sc in scenes if sc.kind != "counting"][:20]
    images = [R.render(sc, 128) for sc in chosen[:10]]
    # the other ten are judged against a scene whose first shape has another kind
    images += [R.render(_wrong_kind(sc, np.random.default_rng(0)), 128) for sc in chosen[10:]]
    report = E.score(images, chosen)
    assert report["overall"] == {"n": 20, "passed": 10, "accuracy": 0.5}
    assert sum(t["n"] for t in report["by_kind"].values()) == 20
    assert report["seen"]["n"] + report["held_out"]["n"] == 20
    assert report["held_out"]["n"] == sum(sc.held_out for sc in chosen)
    assert json.loads(json.dumps(report)) == report
    table = E.markdown_table(report)
    assert "| **overall** | 20 | 10 | 0.500 |" in table
    assert "held-out pairs" in table and "seen pairs" in table


def test_held_out_evaluation_set_scores_true_renders(scenes):
    prompts = S.evaluation_prompts(60, held_out_fraction=1 / 3, seed=5)
    report = E.score([R.render(sc, 128) for sc in prompts], prompts)
    assert report["held_out"]["n"] == 20 and report["held_out"]["accuracy"] >= 0.95
    assert report["overall"]["accuracy"] >= 0.95


def test_judging_from_caption_text_alone(scenes):
    chosen = scenes[:40]
    images = [R.render(sc, 128) for sc in chosen]
    by_text = E.score(images, [sc.caption for sc in chosen])
    by_scene = E.score(images, chosen)
    assert by_text["overall"] == by_scene["overall"] and by_text["overall"]["accuracy"] >= 0.99
    assert by_text["held_out"]["n"] == by_scene["held_out"]["n"]
    assert not E.judge(images[0], "three black stars" if chosen[0].caption != "three black stars" else "a red circle").passed
