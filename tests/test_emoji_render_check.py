"""scripts/emoji_render_check.py: our renders against a vendor's PNGs of the same keys."""

from __future__ import annotations

import importlib.util
import json
import shutil

from PIL import Image

from emoji_fixtures import HELD_OUT, make_packages
from pixcade.data.emoji.build import build_emoji_dataset
from train_support import REPO

spec = importlib.util.spec_from_file_location("emoji_render_check", REPO / "scripts" / "emoji_render_check.py")
render_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render_check)


def test_identical_renders_score_high_and_a_redesign_is_listed_first(tmp_path, capsys):
    data = tmp_path / "data"
    build_emoji_dataset(data, make_packages(tmp_path / "npm"), fetch=False, held_out=HELD_OUT, progress=False)
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    ours = render_check.style_images(data, "base-64", "twemoji")
    for key, path in ours.items():  # the vendor names keys with fe0f and leading zeros
        name = "00" + key if key[0].isdigit() and len(key.split("-")[0]) < 4 else key
        shutil.copy(path, vendor / f"{name}.png")
    Image.new("RGB", (64, 64), "black").save(vendor / "1f339.png")  # the rose, "redesigned"
    sheet = tmp_path / "sheet.png"
    assert render_check.main(["--data", str(data), "--vendor-png", str(vendor), "--sheet", str(sheet)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["matched"] == len(ours) >= 5
    assert report["worst"][0][0] == "1f339" and report["worst"][0][1] < 10
    assert report["below_20_db"] == 1 and report["median_db"] > 100
    assert Image.open(sheet).size == (132 * 6, 132 * len(render_check.SHEET_KEYS))
