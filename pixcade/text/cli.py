"""`pixcade embed`: precompute a dataset's caption embeddings into an EmbeddingCache."""

from __future__ import annotations

import argparse
import sys

from pixcade.commands import ArgumentParser
from pixcade.data.datasets import open_dataset
from pixcade.errors import PixcadeError
from pixcade.limits import check_limit
from pixcade.text.cache import DEFAULT_SHARD_BYTES
from pixcade.text.distributed import build_distributed
from pixcade.text.encoders import DEFAULT_BATCH_SIZE, DEFAULT_ENCODER, DEFAULT_MAX_LENGTH, load_text_encoder
from pixcade.train import distributed as dist


def read_caption_file(path: str) -> list[str]:
    """One caption per line, stripped like dataset captions are; blank lines are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise PixcadeError(f"cannot read captions file {path}: {err}") from None


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="pixcade embed",
        description="Precompute text-encoder embeddings of captions into sharded safetensors files, "
                    "so training reads them instead of running the encoder. Under torchrun the ranks "
                    "split the captions and their shards are merged into the one cache.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="SOURCE", help="dataset: image folder, .jsonl/.csv manifest or tar shards")
    src.add_argument("--captions", metavar="FILE", help="text file with one caption per line")
    p.add_argument("--encoder", default=DEFAULT_ENCODER,
                   help=f"text encoder: {DEFAULT_ENCODER!r} (offline default), a hub id such as "
                        "google/t5-v1_1-xl, or a local model directory (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH,
                   help="tokens per caption; longer captions are truncated (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="CACHE_DIR", help="cache directory (created if needed)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="captions per encoder forward")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="encoder precision; bfloat16 only takes effect on a GPU (default: %(default)s)")
    p.add_argument("--shard-mb", type=float, default=DEFAULT_SHARD_BYTES / 2**20,
                   help="approximate size of each shard file in MiB (default: %(default)s)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.batch_size < 1:
        raise PixcadeError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_limit("batch", args.batch_size, "--batch-size")
    if args.shard_mb <= 0:
        raise PixcadeError(f"--shard-mb must be positive, got {args.shard_mb}")
    if args.captions:
        captions = read_caption_file(args.captions)
    else:

        # The dataset's own caption reading (UTF-8, stripped), so cache keys match the
        # captions training looks up.
        dataset = open_dataset(args.data)
        captions = list(dataset.captions())
        bad = getattr(dataset, "unreadable_shards", [])  # tar shards only
        if bad:
            shown = "; ".join(f"{shard}: {why}" for shard, why in bad[:3]) + ("; ..." if len(bad) > 3 else "")
            print(f"pixcade embed: warning: {len(bad)} of {len(dataset.shards)} shard(s) could not be read "
                  f"to the end, their remaining captions are not embedded ({shown})", file=sys.stderr)
    if not captions:
        raise PixcadeError(f"no captions in {args.captions or args.data}")
    info = dist.setup(args.device)  # under torchrun: this rank's device (cuda:LOCAL_RANK)
    try:
        encoder = load_text_encoder(args.encoder, max_length=args.max_length, device=info.device, dtype=args.dtype)
        shard_bytes = int(args.shard_mb * 2**20)
        computed = build_distributed(info, args.out, captions, encoder, batch_size=args.batch_size,
                                     shard_bytes=shard_bytes)
    finally:
        dist.teardown(info)
    if not info.is_main:
        return 0
    distinct = len(set(captions))
    print(f"{len(captions)} captions ({distinct} distinct): {computed} embedded, {distinct - computed} already "
          f"cached; encoder {encoder.name!r}, max_length {encoder.max_length}, cache {args.out}")
    return 0
