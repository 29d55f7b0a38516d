"""`pixcade embed` over several processes (torchrun): ranks split the captions, each writes
its own shards, and the shards end up in one cache.

Each rank embeds the captions whose cache key falls to it (key mod world size: a share
that does not depend on what is already done) into its own cache directory
``CACHE/parts/<encoder>/rank-R-of-W/``, an ordinary `EmbeddingCache` with its own lock, so
ranks never wait for each other. When all are done rank 0 merges the parts into CACHE
(`EmbeddingCache.absorb`: shards are linked in, not re-encoded) and removes each part whose
every caption CACHE now holds. A run killed midway leaves parts holding every shard it
finished; the next run, at any number of ranks, merges them first and embeds only the rest.
All ranks must see one filesystem (as for sharded training checkpoints).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from pixcade.text.cache import EmbeddingCache, cache_key
from pixcade.text.encoders import DEFAULT_BATCH_SIZE, TextEncoder
from pixcade.train import distributed as dist
from pixcade.train.distributed import DistInfo

PARTS = "parts"


def parts_root(cache: EmbeddingCache) -> Path:
    """Where ranks build their shares for this cache's encoder configuration."""
    tag = hashlib.sha256(f"{cache.encoder_name}\0{cache.max_length}".encode()).hexdigest()[:12]
    return cache.directory / PARTS / tag


def rank_share(captions: list[str], encoder_name: str, max_length: int, rank: int, world_size: int) -> list[str]:
    """The captions rank ``rank`` embeds."""
    return [c for c in captions if int(cache_key(encoder_name, max_length, c), 16) % world_size == rank]


def merge_parts(cache: EmbeddingCache) -> int:
    """Absorb every leftover part of this encoder into ``cache``; returns captions gained."""
    root = parts_root(cache)
    gained = 0
    for directory in sorted(root.glob("rank-*")) if root.is_dir() else []:
        part = EmbeddingCache(directory, cache.encoder_name, cache.max_length)
        gained += cache.absorb(part)
        if part.keys() <= cache.keys():
            shutil.rmtree(directory)
    for empty in (root, root.parent):
        if empty.is_dir() and not any(empty.iterdir()):
            empty.rmdir()
    return gained


def build_distributed(info: DistInfo, directory: str | Path, captions: list[str], encoder: TextEncoder, *,
                      batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True,
                      shard_bytes: int | None = None) -> int:
    """Collective: embed the captions missing from the cache at ``directory``; returns how
    many were computed over all ranks. One process (world size 1) merges what a killed
    distributed run left, then builds straight into the cache."""
    cache = EmbeddingCache(directory, encoder.name, encoder.max_length)
    extra = {} if shard_bytes is None else {"shard_bytes": shard_bytes}
    if info.is_main:
        merge_parts(cache)
    if not info.enabled:  # one process writes straight into the cache
        return cache.build(captions, encoder, batch_size=batch_size, progress=progress, **extra)
    dist.barrier(info)
    cache = EmbeddingCache(directory, encoder.name, encoder.max_length)
    mine = rank_share(cache.missing(captions), encoder.name, encoder.max_length, info.rank, info.world_size)
    part = EmbeddingCache(parts_root(cache) / f"rank-{info.rank:05d}-of-{info.world_size:05d}",
                          encoder.name, encoder.max_length)
    computed = part.build(mine, encoder, batch_size=batch_size, progress=progress and info.is_main, **extra)
    dist.barrier(info)
    if info.is_main:
        merge_parts(cache)
    dist.barrier(info)
    return sum(dist.gather_objects(info, computed))
