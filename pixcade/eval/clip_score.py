"""CLIP score: how well images match their prompts, by a local CLIP model.

``CLIP score = 100 * max(cos(image_embedding, text_embedding), 0)`` (Hessel et al. 2021,
with w = 100 as text-to-image papers report it), averaged over a prompt's images and
then over prompts. The CLIP weights come from a local directory, in Hugging Face
``CLIPModel`` format (config.json + weights + tokenizer + preprocessor config) or, when
the ``open_clip`` package is importable, open_clip's format (open_clip_config.json).
Nothing is ever downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pixcade.errors import PixcadeError
from pixcade.eval.fid import IMAGE_SUFFIXES, image_index, read_image_index
from pixcade.pipeline.images import open_image


def scores_from_embeddings(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Row-wise 100 * max(cos, 0) between matching rows of two [N, D] embeddings."""
    cos = torch.nn.functional.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1)
    return 100 * cos.clamp(min=0)


def _features(out: Any) -> torch.Tensor:
    # transformers < 5 returns the projected embeddings; >= 5 a ModelOutput holding them.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipModel:
    """A CLIP model with its preprocessing: PIL images and strings -> embeddings."""

    def __init__(self, encode_images, encode_texts, name: str) -> None:
        self.encode_images = encode_images
        self.encode_texts = encode_texts
        self.name = name


def load_clip(directory: str | Path, device: str = "cpu") -> ClipModel:
    path = Path(directory)
    if not path.is_dir():
        raise PixcadeError(f"CLIP model directory not found: {path}")
    if (path / "open_clip_config.json").is_file():
        return _load_open_clip(path, device)
    if not (path / "config.json").is_file():
        raise PixcadeError(
            f"{path} is not a CLIP model directory (no config.json or open_clip_config.json)"
        )
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel  # here: ~2.5 s to import

    try:
        # safetensors only: pixcade never unpickles weight files.
        model = CLIPModel.from_pretrained(path, local_files_only=True, use_safetensors=True).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise PixcadeError(f"cannot load CLIP from {path}: {err}".splitlines()[0]) from None
    max_len = model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def encode_images(images: list[Image.Image]) -> torch.Tensor:
        pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
        return _features(model.get_image_features(pixel_values=pixels))

    @torch.no_grad()
    def encode_texts(texts: list[str]) -> torch.Tensor:
        tok = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return _features(
            model.get_text_features(input_ids=tok["input_ids"].to(device),
                                    attention_mask=tok["attention_mask"].to(device))
        )

    return ClipModel(encode_images, encode_texts, name=f"hf:{path.name}")


def _load_open_clip(path: Path, device: str) -> ClipModel:
    try:
        import open_clip
    except ImportError:
        raise PixcadeError(
            f"{path} is an open_clip model but the open_clip package is not installed "
            "(pip install open_clip_torch), or convert it to Hugging Face CLIPModel format"
        ) from None
    # safetensors only: a .bin checkpoint would have to be unpickled.
    weights = path / "open_clip_model.safetensors"
    if not weights.is_file():
        raise PixcadeError(f"{path}: no open_clip_model.safetensors (pixcade reads open_clip weights "
                           "as safetensors only, never a pickled .bin)")
    config = json.loads((path / "open_clip_config.json").read_text())
    if "model_cfg" not in config:
        raise PixcadeError(f"{path}/open_clip_config.json has no model_cfg")
    # Register the directory's architecture under its own name, so open_clip builds it
    # from this config instead of looking a name up online.
    from open_clip.factory import _MODEL_CONFIGS

    name = f"pixcade-local-{path.name}"
    _MODEL_CONFIGS[name] = config["model_cfg"]
    pre = config.get("preprocess_cfg", {})
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=str(weights), device=device,
        image_mean=pre.get("mean"), image_std=pre.get("std"),
    )
    tokenizer = open_clip.get_tokenizer(name)
    model.eval()

    @torch.no_grad()
    def encode_images(images: list[Image.Image]) -> torch.Tensor:
        return model.encode_image(torch.stack([preprocess(im) for im in images]).to(device))

    @torch.no_grad()
    def encode_texts(texts: list[str]) -> torch.Tensor:
        return model.encode_text(tokenizer(texts).to(device))

    return ClipModel(encode_images, encode_texts, name=f"open_clip:{name}")


def clip_scores(
    clip: ClipModel, images: list[Image.Image], prompts: list[str], batch_size: int = 32
) -> np.ndarray:
    """CLIP score of each (image, prompt) pair."""
    if len(images) != len(prompts):
        raise PixcadeError(f"{len(images)} images but {len(prompts)} prompts")
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc="clip score", unit="batch"):
        im = clip.encode_images(images[i : i + batch_size])
        tx = clip.encode_texts(prompts[i : i + batch_size])
        out.append(scores_from_embeddings(im, tx).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def pair_images_with_prompts(images_dir: str | Path, prompts: str | Path | None) -> list[tuple[Path, str]]:
    """Which prompt each image was generated from.

    - ``prompts`` a ``.jsonl`` file: rows ``{"image": path relative to the folder, "prompt": ...}``
      (the manifest ``pixcade drawbench generate`` writes per model) or ``{"images": [...],
      "prompt": ...}`` (the ``prompts.jsonl`` of a ``pixcade generate`` output folder);
    - ``prompts`` a ``.txt`` file: one prompt per line; the folder's images, in sorted
      order, are split into equal consecutive groups, one group per prompt;
    - no ``prompts``: the folder's own ``prompts.jsonl`` index if it has one (so a
      ``pixcade generate`` folder is scored on its final images, not its grid or
      ``stages/``), else each image's caption is the ``.txt`` file beside it.
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise PixcadeError(f"image folder not found: {root}")
    if prompts is not None and Path(prompts).suffix == ".jsonl":
        return read_image_index(prompts, root)
    if prompts is None:
        indexed = image_index(root)
        if indexed is not None:
            return indexed
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PixcadeError(f"no images in {root}")
    if prompts is None:
        missing = [p.name for p in files if not p.with_suffix(".txt").is_file()]
        if missing:
            raise PixcadeError(f"no --prompts and no caption .txt beside {missing[0]} (and {len(missing) - 1} more)")
        return [(p, p.with_suffix(".txt").read_text(encoding="utf-8").strip()) for p in files]
    if not Path(prompts).is_file():
        raise PixcadeError(f"prompts file not found: {prompts}")
    lines = [ln.strip() for ln in Path(prompts).read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines or len(files) % len(lines):
        raise PixcadeError(f"{len(files)} images can't be split evenly over {len(lines)} prompts")
    per = len(files) // len(lines)
    return [(f, lines[i // per]) for i, f in enumerate(files)]


def clip_score_report(clip: ClipModel, pairs: list[tuple[Path, str]], batch_size: int = 32) -> dict:
    """Per-prompt mean CLIP score and the mean over prompts, as a JSON-ready dict."""
    images = [open_image(p) for p, _ in tqdm(pairs, desc="load images", unit="img")]
    scores = clip_scores(clip, images, [t for _, t in pairs], batch_size)
    per_prompt: dict[str, list[float]] = {}
    for (_, prompt), s in zip(pairs, scores):
        per_prompt.setdefault(prompt, []).append(float(s))
    rows = [{"prompt": p, "n_images": len(v), "clip_score": float(np.mean(v))} for p, v in per_prompt.items()]
    return {
        "metric": "clip_score",
        "definition": "100 * max(cos(image, text), 0), mean over a prompt's images, then over prompts",
        "clip": clip.name,
        "n_images": len(pairs),
        "n_prompts": len(rows),
        "mean": float(np.mean([r["clip_score"] for r in rows])),
        "per_prompt": rows,
    }
