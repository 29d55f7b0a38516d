"""CLIP score on a tiny random CLIP built here (no download): definition, pairing, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pixcade.errors import PixcadeError
from cli_support import verbs
from pixcade.eval.clip_score import (
    clip_score_report,
    load_clip,
    pair_images_with_prompts,
    scores_from_embeddings,
)

eval_main = verbs("eval")

PROMPTS = ["a red circle", "two blue squares", "a green star"]


def _build_tiny_clip(directory) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    # A character-level BPE vocabulary: every letter alone and word-final, no merges.
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<|startoftext|>", "<|endoftext|>", "<unk>"] + list(letters) + [c + "</w>" for c in letters]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt")).save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(directory)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_clip")
    _build_tiny_clip(directory)
    return directory


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(len(PROMPTS) * 2):  # two images per prompt
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(directory / f"{i:02d}.png")
    return directory


def test_score_is_100_times_clamped_cosine():
    img = torch.tensor([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    txt = torch.tensor([[2.0, 0.0], [4.0, 3.0], [-1.0, -1.0]])
    # cos = 1, 24/25, -1 -> 100, 96, 0 (negative similarity scores 0, not below)
    torch.testing.assert_close(scores_from_embeddings(img, txt), torch.tensor([100.0, 96.0, 0.0]))


def test_report_matches_direct_computation(clip_dir, image_dir, tmp_path):
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS) + "\n")
    pairs = pair_images_with_prompts(image_dir, prompts_file)
    assert [t for _, t in pairs] == [p for p in PROMPTS for _ in range(2)]
    report = clip_score_report(load_clip(clip_dir), pairs, batch_size=4)

    # Independently: the model's own embeddings, cosine by hand.
    model = CLIPModel.from_pretrained(clip_dir).eval()
    tok = CLIPTokenizer.from_pretrained(clip_dir)
    proc = CLIPImageProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        ids = tok(PROMPTS, padding=True, return_tensors="pt")
        txt = model.get_text_features(**ids)
        txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
        for k, prompt in enumerate(PROMPTS):
            ims = [Image.open(p).convert("RGB") for p, t in pairs if t == prompt]
            img = model.get_image_features(**proc(images=ims, return_tensors="pt"))
            img = img if isinstance(img, torch.Tensor) else img.pooler_output
            cos = (img @ txt[k]) / (img.norm(dim=-1) * txt[k].norm())
            want = float((100 * cos.clamp(min=0)).mean())
            row = report["per_prompt"][k]
            assert row["prompt"] == prompt and row["n_images"] == 2
            assert row["clip_score"] == pytest.approx(want, abs=1e-3)
    assert report["mean"] == pytest.approx(np.mean([r["clip_score"] for r in report["per_prompt"]]))
    assert report["n_images"] == 6 and report["n_prompts"] == 3


def test_pairing_from_captions_and_jsonl(image_dir, tmp_path):
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("\n".join(json.dumps({"image": f"{i:02d}.png", "prompt": PROMPTS[i % 3]}) for i in range(3)))
    pairs = pair_images_with_prompts(image_dir, jsonl)
    assert [(p.name, t) for p, t in pairs] == [("00.png", PROMPTS[0]), ("01.png", PROMPTS[1]), ("02.png", PROMPTS[2])]
    with pytest.raises(PixcadeError, match="caption"):
        pair_images_with_prompts(image_dir, None)
    uneven = tmp_path / "four.txt"
    uneven.write_text("a\nb\nc\nd\n")
    with pytest.raises(PixcadeError, match="evenly"):
        pair_images_with_prompts(image_dir, uneven)


def test_cli_json_output(clip_dir, image_dir, tmp_path, capsys):
    captioned = tmp_path / "captioned"
    captioned.mkdir()
    for i, prompt in enumerate(PROMPTS):
        Image.open(image_dir / f"{i:02d}.png").save(captioned / f"{i}.png")
        (captioned / f"{i}.txt").write_text(prompt)
    out = tmp_path / "score.json"
    assert eval_main(["clip-score", "--images", str(captioned), "--clip", str(clip_dir), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert {r["prompt"] for r in printed["per_prompt"]} == set(PROMPTS)
    assert all(0 <= r["clip_score"] <= 100 for r in printed["per_prompt"])


def test_bad_clip_directories(tmp_path):
    with pytest.raises(PixcadeError, match="not found"):
        load_clip(tmp_path / "missing")
    with pytest.raises(PixcadeError, match="not a CLIP model directory"):
        load_clip(tmp_path)
    (tmp_path / "open_clip_config.json").write_text("{}")
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(PixcadeError, match="open_clip package is not installed"):
            load_clip(tmp_path)
    else:
        with pytest.raises(PixcadeError, match="no open_clip_model"):
            load_clip(tmp_path)
