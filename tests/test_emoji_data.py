"""`pixcade data emoji` on fake packages built here (never the network)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emoji_fixtures import EMOJI, HELD_OUT, make_packages, raster, write_tarball
from pixcade.cli import main as pixcade_main
from pixcade.data.datasets import open_dataset
from pixcade.data.emoji import sources
from pixcade.data.emoji.audit import audit
from pixcade.data.emoji.build import build_emoji_dataset
from pixcade.data.emoji.render import on_white
from pixcade.data.emoji.spec import (
    STYLE_BY_NAME, caption_name, captions, family_of, held_out_rows, key_of, swap_medium_tones,
)
from pixcade.errors import PixcadeError


def test_keys_families_names_follow_the_spec():
    assert key_of("1F469-200D-1F692") == "1f469-200d-1f692"
    assert key_of("0036-FE0F-20E3") == "36-20e3"
    assert key_of("not-hex") is None
    assert family_of("1f469-1f3fd-200d-1f692") == "1f9d1-200d-1f692"  # the spec's example
    assert family_of("1f44d-1f3fc") == "1f44d"
    assert family_of("1f468") == "1f468"  # fewer than three parts: man stays man
    assert swap_medium_tones("1f44d-1f3fc") == "1f44d-1f3fd"
    assert caption_name("man: medium skin tone") == "man, medium skin tone"
    assert caption_name("flag: Norway") == "flag of Norway"
    assert caption_name("keycap: #") == "keycap #"
    got = captions(["rocket", "space ship"], ["rocket", "launch", "space", "fire", "x"], "Twemoji style")
    assert got == ["rocket, Twemoji style", "an emoji of rocket in Twemoji style", "Twemoji style emoji: rocket",
                   "rocket, Twemoji style; launch, space, fire", "space ship, Twemoji style"]


def test_shipped_held_out_list_matches_the_spec():
    rows = held_out_rows()
    assert len(rows) == 1025
    assert sum(r.split == "val_cs" for r in rows) == 268 and sum(r.split == "test_cs" for r in rows) == 450
    assert all(r.style in STYLE_BY_NAME for r in rows)


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> Path:
    return make_packages(tmp_path_factory.mktemp("npm"))


@pytest.fixture(scope="module")
def built(packages, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("build") / "emoji"
    summary = build_emoji_dataset(out, packages, fetch=False, held_out=HELD_OUT, progress=False)
    return out, summary


def test_build_is_deterministic_byte_for_byte(packages, built, tmp_path):
    again = tmp_path / "again"
    build_emoji_dataset(again, packages, fetch=False, held_out=HELD_OUT, progress=False)
    assert _tree(again) == _tree(built[0])


def test_a_killed_builds_partial_folder_is_removed_by_the_next_build(packages, tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    partial = tmp_path / f".emoji.{int(gone.stdout)}-0123456789ab.tmp"
    (partial / "base").mkdir(parents=True)
    build_emoji_dataset(tmp_path / "emoji", packages, fetch=False, held_out=HELD_OUT, progress=False)
    assert not partial.exists() and (tmp_path / "emoji").is_dir()


def test_layout_manifests_and_held_out_rows(built):
    out, summary = built
    rows = [json.loads(line) for line in (out / "base-64/train.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (out / "base-64/heldout.jsonl").read_text().splitlines()]
    # 8 named non-component keys per style, Norway and Bouvet merged: 7 images per style, 42 in all;
    # held out: twemoji rocket and the google flag image.
    assert summary["images"] == {"train": 40, "held_out": 2}
    assert summary["held_out_rows"]["not_in_build"] == 0
    assert summary["held_out_rows"]["prompts_differing_count"] == 0
    assert all(s["merged_keys"] == 1 for s in summary["styles"].values())
    assert {(r["style"], r["key"]) for r in held} == {("twemoji", "1f680"), ("google", "1f1f3-1f1f4")}
    trained = {(r["style"], r["key"]) for r in rows}
    assert ("twemoji", "1f680") not in trained and ("google", "1f1f3-1f1f4") not in trained
    assert ("openmoji", "1f680") in trained
    flag = [r["caption"] for r in rows if (r["style"], r["key"]) == ("openmoji", "1f1f3-1f1f4")]
    assert "flag of Bouvet Island, OpenMoji style" in flag  # the merged key's name, as an alias
    assert "flag of Norway, OpenMoji style; NO" in flag
    assert not any("3fb" in r["key"] for r in rows)  # the component swatch is left out
    assert all(s["skipped"] == {"component": 1} for s in summary["styles"].values())
    # The SR set: five styles (no google), same rows at 256 px; both sets load in the trainer's reader.
    sr = [json.loads(line) for line in (out / "sr-256/train.jsonl").read_text().splitlines()]
    assert {r["style"] for r in sr} == set(STYLE_BY_NAME) - {"google"}
    sample = open_dataset(out / "sr-256/train.jsonl")[0]
    assert sample["image"].size == (256, 256)
    assert open_dataset(out / "base-64/train.jsonl")[0]["image"].size == (64, 64)
    assert "CC-BY-SA-4.0" in (out / "ATTRIBUTION.md").read_text()


def test_lobehub_medium_tones_are_swapped_back(built):
    out, _ = built
    # The fixture's fluent files carry 1f3fc's colour under the name 1f3fd and vice versa.
    pixel = np.asarray(Image.open(out / "base-64/train/fluent-flat/1f44d-1f3fd.png"))[32, 32]
    assert tuple(pixel) == (200, 150, 100)


def test_rasters_are_downsampled_premultiplied_and_composited_on_white(built):
    out, _ = built
    got = np.asarray(Image.open(out / "base-64/train/fluent-3d/1f339.png")).astype(int)
    assert tuple(got[0, 0]) == (255, 255, 255)
    # Premultiplied area averaging then compositing is (up to rounding) compositing then
    # averaging, since both are linear; straight alpha would mix the transparent margin's
    # hidden red into the edge.
    source = Image.open(io.BytesIO(raster(EMOJI["1f339"][3], 256, "WEBP")))
    expected = np.asarray(on_white(source).resize((64, 64), Image.Resampling.BOX)).astype(int)
    colour = source.convert("RGB").resize((64, 64), Image.Resampling.BOX)
    alpha = source.getchannel("A").resize((64, 64), Image.Resampling.BOX)
    straight = np.asarray(on_white(Image.merge("RGBA", (*colour.split(), alpha)))).astype(int)
    assert np.abs(got - expected).max() <= 1
    assert np.abs(straight - expected).max() > 30  # so the check above can tell them apart


def test_corrupt_or_truncated_tarball_is_one_line_error_and_no_dataset(packages, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in packages.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    victim = bad / STYLE_BY_NAME["twemoji"].tarball
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(PixcadeError, match="not a readable tarball") as err:
        build_emoji_dataset(tmp_path / "out", bad, fetch=False, held_out=HELD_OUT, progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*.tmp"))
    victim.write_bytes(b"garbage")
    with pytest.raises(PixcadeError, match="not a readable tarball"):
        build_emoji_dataset(tmp_path / "out", bad, fetch=False, held_out=HELD_OUT, progress=False)


def test_wrong_version_in_a_tarball_is_refused(packages, tmp_path):
    st = STYLE_BY_NAME["openmoji"]
    other = type(st)(**{**st.__dict__, "version": "1.0.0"})
    folder = tmp_path / "npm"
    folder.mkdir()
    for f in packages.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    write_tarball(folder / st.tarball, other, {"package/color/svg/1F680.svg": b"<svg/>"})
    with pytest.raises(PixcadeError, match="openmoji@1.0.0.*pinned to openmoji@17.0.0"):
        build_emoji_dataset(tmp_path / "out", folder, fetch=False, held_out=HELD_OUT, progress=False)


def test_svg_the_renderer_refuses_is_a_counted_skip(tmp_path):
    folder = make_packages(tmp_path / "npm", extra={"twemoji": {"package/1f339.svg": b"<svg><not svg"}})
    summary = build_emoji_dataset(tmp_path / "out", folder, fetch=False, held_out=HELD_OUT, progress=False,
                                  style_names=["twemoji"])
    report = summary["styles"]["twemoji"]
    assert report["skipped"]["refused by the renderer"] == 1
    assert report["refused"][0].startswith("1f339.svg: ")
    assert summary["images"]["train"] == 5  # 7 images - the refused rose - the held-out rocket


def test_unknown_style_missing_tarball_and_no_npm(packages, tmp_path, monkeypatch, capsys):
    with pytest.raises(PixcadeError, match="unknown emoji style 'apple'"):
        build_emoji_dataset(tmp_path / "o", packages, fetch=False, style_names=["apple"])
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PixcadeError, match="twemoji-svg-15.0.0.tgz.*npm is not on the PATH"):
        build_emoji_dataset(tmp_path / "o", empty, fetch=True, style_names=["twemoji"])
    assert pixcade_main(["data", "emoji", "--out", str(tmp_path / "o"), "--from", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing emoji-datasource-google-16.0.0.tgz" in err


def test_non_square_svg_is_centred_on_a_square_not_refused():
    from pixcade.data.emoji.render import render_svg

    tall = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 36">'
            b'<rect width="32" height="36" fill="rgb(0,0,255)"/></svg>')
    image = np.asarray(render_svg(tall, 64)).astype(int)
    assert image.shape == (64, 64, 3)
    blue = (image[:, :, 2] > 200) & (image[:, :, 0] < 50)
    cols = np.flatnonzero(blue.all(axis=0))
    assert blue.all(axis=0)[4:-4].all() and cols.min() >= 2 and 63 - cols.max() >= 2  # white bars both sides
    assert abs(int(cols.min()) - (63 - int(cols.max()))) <= 1  # centred


def test_the_audit_passes_a_build_and_names_every_kind_of_leak(tmp_path, capsys):
    data = tmp_path / "data"
    build_emoji_dataset(data, make_packages(tmp_path / "npm"), fetch=False, held_out=HELD_OUT, progress=False)
    held_list = tmp_path / "heldout.jsonl"  # the fixture's list, as the spec's file spells one
    held_list.write_text("".join(json.dumps({"style": h.style, "key": h.key, "split": h.split, "prompt": h.prompt})
                                 + "\n" for h in HELD_OUT))
    assert pixcade_main(["data", "emoji-audit", "--data", str(data), "--held-out", str(held_list)]) == 0
    report = audit(data, HELD_OUT)
    assert report["clean"] and set(report["sets"]) == {"base-64", "sr-256"}
    assert report["sets"]["base-64"]["held_out_images"] == 2
    # Leak one held-out drawing under another name, its key, and its prompt into training.
    base = data / "base-64"
    held = [json.loads(line) for line in (base / "heldout.jsonl").read_text().splitlines()]
    rocket = next(r for r in held if r["style"] == "twemoji")
    shutil.copy(base / rocket["image"], base / "train" / "twemoji" / "copy.png")
    rows = [{"image": "train/twemoji/copy.png", "style": "twemoji", "key": "ffff", "family": "ffff", "caption": "x"},
            {**rocket, "image": "train/twemoji/copy.png", "caption": "rocket, Twemoji style"}]
    with open(base / "train.jsonl", "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    leak = audit(data, HELD_OUT)["sets"]["base-64"]
    assert not leak["clean"]
    assert leak["rows_naming_a_held_out_key"] == ["twemoji 1f680"]
    assert leak["images_with_held_out_pixels"] == ["twemoji train/twemoji/copy.png"]
    assert leak["captions_that_are_held_out_prompts"] == ["rocket, Twemoji style"]
    capsys.readouterr()
    assert pixcade_main(["data", "emoji-audit", "--data", str(data), "--held-out", str(held_list)]) == 1
    assert json.loads(capsys.readouterr().out)["clean"] is False
    assert pixcade_main(["data", "emoji-audit", "--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no base-64/train.jsonl or sr-256/train.jsonl" in err
