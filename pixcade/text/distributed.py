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
import io
import shutil
import sys
from pathlib import Path

from pixcade.data.datasets import open_dataset
from pixcade.errors import PixcadeError
from pixcade.io import read_text
from pixcade.text.cache import EmbeddingCache, cache_key
from pixcade.text.encoders import DEFAULT_BATCH_SIZE, TextEncoder, load_text_encoder
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


def read_caption_file(path: str) -> list[str]:
    """One caption per line, stripped like dataset captions are; blank lines are skipped."""
    # newline=None: lines end where a file opened in text mode ends them (\n, \r\n, \r).
    with io.StringIO(read_text(path, "captions file"), newline=None) as f:
        return [line.strip() for line in f if line.strip()]


def read_captions(captions_file: str | None, data: str | None) -> list[str]:
    """The captions `pixcade embed` embeds: a file's lines, or every caption of a dataset read
    as training reads them (UTF-8, stripped), so cache keys match what training looks up."""
    if captions_file:
        captions = read_caption_file(captions_file)
    else:
        dataset = open_dataset(data)
        captions = list(dataset.captions())
        bad = getattr(dataset, "unreadable_shards", [])  # tar shards only
        if bad:
            shown = "; ".join(f"{shard}: {why}" for shard, why in bad[:3]) + ("; ..." if len(bad) > 3 else "")
            print(f"pixcade embed: warning: {len(bad)} of {len(dataset.shards)} shard(s) could not be read "
                  f"to the end, their remaining captions are not embedded ({shown})", file=sys.stderr)
    if not captions:
        raise PixcadeError(f"no captions in {captions_file or data}")
    return captions


def embed(captions: list[str], directory: str | Path, encoder: str, *, max_length: int, device: str | None,
          dtype: str, batch_size: int, shard_bytes: int) -> tuple[int, str, int] | None:
    """Embed ``captions`` into the cache ``directory`` with ``encoder`` in this process, or
    with its share of them under torchrun. On the main process (computed now, the encoder's
    name, its max_length); None on the others."""
    info = dist.setup(device)  # under torchrun: this rank's device (cuda:LOCAL_RANK)
    try:
        loaded = load_text_encoder(encoder, max_length=max_length, device=info.device, dtype=dtype)
        computed = build_distributed(info, directory, captions, loaded, batch_size=batch_size, shard_bytes=shard_bytes)
    finally:
        dist.teardown(info)
    return (computed, loaded.name, loaded.max_length) if info.is_main else None
