"""FID/KID and CLIP score on the folder `pixcade generate` writes: its samples are the final
images its prompts.jsonl lists, never grid.png or the earlier stages under stages/."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pixcade.errors import PixcadeError
from cli_support import verbs
from pixcade.eval.clip_score import pair_images_with_prompts
from pixcade.eval.fid import extract_features
from pixcade.pipeline.jobs import Job, Layout

eval_main = verbs("eval")

PROMPTS = ["a red circle", "two blue squares"]
N = 2


def mean_colour_features():
    """A `py:` feature extractor: each image's mean colour."""
    return lambda x: x.mean(dim=(2, 3))


def _colour(job: Job) -> tuple[int, int, int]:
    return (40 + 60 * job.prompt, 30 + 100 * job.image, 200 - 90 * job.prompt * job.image)


def _generate_folder(out):
    """What `pixcade generate --save-stages` leaves: finals, stages/base/, grid.png, the index
    (written by the generator's own Layout)."""
    layout = Layout(out, len(PROMPTS), N)
    layout.prepare(PROMPTS, {"seed": 0}, ["base"])
    for p in range(len(PROMPTS)):
        for i in range(N):
            job = Job(p, i)
            Image.new("RGB", (8, 8), _colour(job)).save(layout.image_path(job))
            Image.new("RGB", (4, 4), (255, 255, 0)).save(layout.stage_path("base", job))
    Image.new("RGB", (22, 22), (0, 0, 0)).save(out / "grid.png")
    return layout


def _expected_features() -> np.ndarray:
    rows = [_colour(Job(p, i)) for p in range(len(PROMPTS)) for i in range(N)]
    return np.array(rows, dtype=np.float64) / 127.5 - 1.0


def test_features_of_a_generate_folder_are_its_final_images_only(tmp_path):
    _generate_folder(tmp_path / "out")
    feats = extract_features(tmp_path / "out", mean_colour_features())
    # 4 finals; the grid (black) and the base-stage images (yellow) would add 5 rows.
    np.testing.assert_allclose(feats, _expected_features(), atol=1e-6)


def test_an_unfinished_generate_folder_is_an_error(tmp_path):
    layout = _generate_folder(tmp_path / "out")
    layout.image_path(Job(1, 0)).unlink()
    with pytest.raises(PixcadeError, match=r"1 of 4 images listed in .*prompts\.jsonl are missing, e\.g\. p0001_i00"):
        extract_features(tmp_path / "out", mean_colour_features())


def test_a_folder_with_its_own_prompts_jsonl_is_still_read_whole(tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    for k in range(3):
        Image.new("RGB", (8, 8), (k, k, k)).save(folder / f"{k}.png")
    (folder / "prompts.jsonl").write_text(json.dumps({"file": "0.png", "text": "not our index"}) + "\n")
    assert extract_features(folder, mean_colour_features()).shape == (3, 3)


def test_cli_fid_counts_only_the_final_images(tmp_path, capsys):
    _generate_folder(tmp_path / "out")
    real = tmp_path / "real"
    real.mkdir()
    for k in range(4):
        Image.new("RGB", (8, 8), _colour(Job(k // 2, k % 2))).save(real / f"{k}.png")
    assert eval_main(["fid", "--real", str(real), "--fake", str(tmp_path / "out"),
                      "--features", "py:test_eval_generated_dirs:mean_colour_features"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["n_real"], result["n_fake"]) == (4, 4)
    assert result["fid"] == pytest.approx(0.0, abs=1e-6)  # the same four colours


def test_clip_pairs_of_a_generate_folder(tmp_path):
    _generate_folder(tmp_path / "out")
    expected = [(f"p{p:04d}_i{i:02d}.png", PROMPTS[p]) for p in range(len(PROMPTS)) for i in range(N)]
    for prompts in (None, tmp_path / "out" / "prompts.jsonl"):  # found by itself, or named
        pairs = pair_images_with_prompts(tmp_path / "out", prompts)
        assert [(p.name, t) for p, t in pairs] == expected
        assert all(p.parent == tmp_path / "out" for p, _ in pairs)


def test_clip_pairs_of_a_drawbench_folder_and_bad_index_lines(tmp_path):
    folder = tmp_path / "model-0"
    folder.mkdir()
    rows = [{"image": f"0000_{k}.png", "prompt": "a red circle", "category": "Colors"} for k in range(2)]
    (folder / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for k in range(2):
        Image.new("RGB", (8, 8)).save(folder / f"0000_{k}.png")
    assert [(p.name, t) for p, t in pair_images_with_prompts(folder, None)] == [
        ("0000_0.png", "a red circle"), ("0000_1.png", "a red circle")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"images": ["a.png"], "prompt": "x"}) + "\n" + json.dumps({"images": [3], "prompt": "y"}))
    with pytest.raises(PixcadeError, match=r"bad\.jsonl:2: expected"):
        pair_images_with_prompts(folder, bad)


def test_the_extractor_sees_only_the_listed_images(tmp_path):
    # One batch of the four 8 px finals: no 22 px grid, no 4 px stage images.
    _generate_folder(tmp_path / "out")
    seen = []
    extract_features(tmp_path / "out", lambda x: seen.append(tuple(x.shape)) or torch.zeros(x.shape[0], 1),
                     batch_size=16)
    assert seen == [(4, 3, 8, 8)]
