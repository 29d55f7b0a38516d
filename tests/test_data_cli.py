"""`pixcade data shapes`: the on-disk dataset it writes, and its errors."""

import numpy as np
import pytest
from PIL import Image

from pixcade import cli
from pixcade.data import render as R
from pixcade.data import shapes as S
from pixcade.data.shapes_dataset import write_shapes_dataset
from pixcade.errors import PixcadeError


def test_writes_images_captions_and_scenes(tmp_path):
    out = tmp_path / "shapes"
    assert cli.main(["data", "shapes", "--n", "12", "--res", "32", "--out", str(out), "--seed", "3"]) == 0
    names = sorted(p.name for p in out.iterdir())
    stems = [f"{i:08d}" for i in range(12)]
    assert names == sorted(f"{s}.{ext}" for s in stems for ext in ("png", "txt", "json"))
    for i, stem in enumerate(stems):
        expected = S.scene_for_index(3, i)
        scene = S.Scene.from_json((out / f"{stem}.json").read_text())
        assert scene == expected
        assert (out / f"{stem}.txt").read_text().strip() == expected.caption
        with Image.open(out / f"{stem}.png") as img:
            assert img.mode == "RGB" and img.size == (32, 32)
            assert np.array_equal(np.asarray(img), np.asarray(R.render(expected, 32)))  # lossless


def test_held_out_pairs_only_with_the_flag(tmp_path):
    def pairs(folder):
        return {sh.pair for p in folder.glob("*.json") for sh in S.Scene.from_json(p.read_text()).shapes}

    write_shapes_dataset(tmp_path / "a", 150, 16, seed=1, progress=False)
    write_shapes_dataset(tmp_path / "b", 150, 16, seed=1, include_held_out=True, progress=False)
    assert not pairs(tmp_path / "a") & S.HELD_OUT
    assert pairs(tmp_path / "b") & S.HELD_OUT


@pytest.mark.parametrize(
    "args",
    [["--n", "0", "--res", "32"], ["--n", "2", "--res", "8"], ["--n", "2", "--res", "32", "--seed", "-1"]],
)
def test_bad_numbers_exit_2(tmp_path, args, capsys):
    assert cli.main(["data", "shapes", *args, "--out", str(tmp_path / "x")]) == 2
    assert "error" in capsys.readouterr().err


def test_refuses_a_non_empty_folder_and_unknown_subcommand(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(PixcadeError, match="not empty"):
        write_shapes_dataset(tmp_path, 1, 16, progress=False)
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert cli.main(["data", "nonsense"]) == 2
    assert cli.main(["data", "shapes", "--n", "3"]) == 2  # a missing required flag: one line, exit 2


def test_kind_weights_flag(tmp_path, capsys):
    out = tmp_path / "mix"
    args = ["data", "shapes", "--n", "40", "--res", "16", "--out", str(out), "--seed", "2"]
    assert cli.main([*args, "--kind-weights", "relation=1, position=1"]) == 0
    scenes = [S.Scene.from_json(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert {sc.kind for sc in scenes} == {"relation", "position"}
    assert scenes[7] == S.scene_for_index(2, 7, kind_weights={"relation": 1, "position": 1})
    capsys.readouterr()
    for bad, words in [("relation", "KIND=WEIGHT"), ("relation=x", "not a number"), ("circles=1", "unknown scene kind")]:
        assert cli.main([*args[:-2], "--out", str(tmp_path / "bad"), "--kind-weights", bad]) == 2
        err = capsys.readouterr().err
        assert words in err and err.startswith("pixcade data shapes: error: ") and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()
