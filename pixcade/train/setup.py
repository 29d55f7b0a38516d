"""Building a run's parts from its config: optimizer, data, text conditioning, previews."""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any, Iterable

import torch
from torch import nn

from pixcade.data.datasets import CaptionedImages, open_dataset
from pixcade.data.samples import Skipped
from pixcade.data.transforms import stage_transform
from pixcade.diffusion.precision import computes_bf16
from pixcade.errors import PixcadeError
from pixcade.stage import StageConfig
from pixcade.text.cache import EmbeddingCache
from pixcade.text.encoders import encoder_name, load_text_encoder, pad_embeddings
from pixcade.train.config import CascadeTrainConfig, TrainConfig


def build_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.optimizer == "adafactor":
        return torch.optim.Adafactor(params, lr=cfg.lr, foreach=device.type == "cuda" or None)
    # The fused kernel is the fastest on GPUs and CPUs (2-2.5x torch's default
    # single-tensor loop on CPU, measured in benchmarks/); other devices take the default.
    fused = True if device.type in ("cuda", "cpu") else None
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, fused=fused)


def autocast_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the run's forward and backward go under bf16 autocast on ``device``:
    ``train.bf16`` as given, or for "auto" whether the device computes bf16 natively."""
    return computes_bf16(device) if cfg.bf16 == "auto" else bool(cfg.bf16)


def precision_note(cfg: TrainConfig, device: torch.device) -> str:
    """The log line saying what a run computes in and why; it warns where ``train.bf16`` true
    asks for bf16 on a device that only emulates it."""
    native = computes_bf16(device)
    if cfg.bf16 == "auto":
        what, does = ("bf16 autocast", "computes") if native else ("fp32", "does not compute")
        return f'pixcade train: {what} (train.bf16 "auto": this device {does} bf16 natively)'
    if cfg.bf16 and not native:
        return ("pixcade train: bf16 autocast (train.bf16 true), but this device does not compute bf16 natively: "
                'it is emulated, many times slower than fp32 (21x on an AVX2 CPU); "auto" would train in fp32')
    return f"pixcade train: {'bf16 autocast' if cfg.bf16 else 'fp32'} (train.bf16 {str(cfg.bf16).lower()})"


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for optimizer step ``step`` (1-based): linear warmup, then constant or
    a half cosine that reaches 0 at ``max_steps``."""
    if cfg.warmup_steps > 0 and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    done = min(1.0, (step - cfg.warmup_steps) / (cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * done))


def open_cache(cfg: CascadeTrainConfig) -> EmbeddingCache:
    return EmbeddingCache(cfg.embedding_cache, encoder_name(cfg.text_encoder), cfg.max_length)


def dataset_captions(dataset: Any) -> list[str] | None:
    """Every caption of a folder/manifest dataset (cheap: no image is decoded); None for
    a stream of shards, which can only be listed by reading it."""
    return dataset.captions() if isinstance(dataset, CaptionedImages) else None


def ensure_cached(cfg: CascadeTrainConfig, cache: EmbeddingCache, captions: list[str] | None) -> int:
    """Embeds the dataset's captions missing from the cache, once, before training.

    Only for datasets whose captions can be listed; a stream of shards must be embedded
    beforehand with `pixcade embed` (a miss then stops the run with that advice).
    """
    if captions is None:
        return 0
    missing = cache.missing(captions)
    if not missing:
        return 0
    print(f"pixcade train: {len(missing)} caption(s) are not in the embedding cache "
          f"{cfg.embedding_cache}; embedding them now with {cfg.text_encoder!r}", file=sys.stderr)
    encoder = load_text_encoder(cfg.text_encoder, cfg.max_length)
    return cache.build(missing, encoder, progress=sys.stderr.isatty())


def open_training_data(source: str, stage: StageConfig, cfg: TrainConfig, rank: int, world_size: int) -> Any:
    if not source:
        raise PixcadeError(f"stage {stage.name!r} has no training data: set train.data or pass --data")
    return open_dataset(
        source, rank=rank, world_size=world_size, shuffle=True, seed=cfg.seed,
        transform=stage_transform(stage, seed=cfg.seed),
    )


def embed_batch(cache: EmbeddingCache, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    emb, mask = pad_embeddings(cache.get(captions))
    return emb.to(device, non_blocking=True), mask.to(device, non_blocking=True)


def preview_conditioning(
    cfg: CascadeTrainConfig, stage: StageConfig, tcfg: TrainConfig, source: str, cache: EmbeddingCache
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Fixed inputs for the preview grid: the configured prompts (encoded here, once), or
    the first samples of the data (their captions from the cache; for super-resolution
    stages also their full low-res images, uncropped)."""
    lowres = None
    captions: list[str] = []
    if stage.is_super_resolution or not tcfg.sample_prompts:
        full = dataclasses.replace(stage, train_crop=None)
        data = open_dataset(source, transform=stage_transform(full, seed=tcfg.seed))
        samples = _first_samples(data, tcfg.sample_count)
        captions = [s["caption"] for s in samples]
        if stage.is_super_resolution:
            lowres = torch.stack([s["lowres"] for s in samples])
    if tcfg.sample_prompts and not stage.is_super_resolution:
        encoder = load_text_encoder(cfg.text_encoder, cfg.max_length)
        emb, mask = encoder.encode(list(tcfg.sample_prompts))
        del encoder
        return emb, mask, None
    emb, mask = pad_embeddings(cache.get(captions))
    return emb, mask, lowres


def _first_samples(dataset: Any, n: int) -> list[dict[str, Any]]:
    out = []
    items = (dataset[i] for i in range(len(dataset))) if isinstance(dataset, CaptionedImages) else iter(dataset)
    for item in items:
        if not isinstance(item, Skipped):
            out.append(item)
            if len(out) == n:
                break
    if not out:
        raise PixcadeError("the dataset has no readable samples for the preview grid")
    return out
