"""`pixcade embed`: parse, then `pixcade.text.distributed.read_captions` and `embed`."""

from __future__ import annotations

import argparse

from pixcade.commands import ArgumentParser
from pixcade.errors import PixcadeError
from pixcade.limits import check_limit
from pixcade.text.cache import DEFAULT_SHARD_BYTES
from pixcade.text.distributed import embed, read_captions
from pixcade.text.encoders import DEFAULT_BATCH_SIZE, DEFAULT_ENCODER, DEFAULT_MAX_LENGTH


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
    captions = read_captions(args.captions, args.data)
    result = embed(captions, args.out, args.encoder, max_length=args.max_length, device=args.device,
                   dtype=args.dtype, batch_size=args.batch_size, shard_bytes=int(args.shard_mb * 2**20))
    if result is not None:  # the main process reports
        computed, name, max_length = result
        distinct = len(set(captions))
        print(f"{len(captions)} captions ({distinct} distinct): {computed} embedded, {distinct - computed} already "
              f"cached; encoder {name!r}, max_length {max_length}, cache {args.out}")
    return 0
