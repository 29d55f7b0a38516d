"""WebDataset tar shards, streamed, split over distributed ranks and data-loader workers.

A shard is a tar whose members are grouped into samples by key: the member name up to
the first dot of its last path component (`a/000001.jpg` and `a/000001.txt` form sample
`a/000001` with fields `jpg` and `txt`); a sample's members are consecutive, as the
tools that write shards (img2dataset, webdataset's TarWriter) produce them. A sample
needs one image field (png/jpg/jpeg/webp) and a `txt` caption; other fields (`json`, ...)
are ignored.

Splitting, so each sample is read exactly once per epoch over W ranks of K workers:
rank r takes shards r::W, then worker w takes shards w::K of those. Where there are too
few shards for that (fewer than W, or a rank holding fewer than K), the readers that
share shards read the same shards and keep every sample whose running index i in that
stream satisfies i % n == j (n readers, j this reader): still exactly once, at the cost
of each of them reading (but not decoding) the others' samples.
"""

from __future__ import annotations

import glob
import itertools
import os
import random
import re
import tarfile
from typing import Any, Callable, Iterator, Sequence

from torch.utils.data import IterableDataset, get_worker_info

from pixcade.data.samples import IMAGE_EXTENSIONS, Skipped, skip, decode_image, stable_seed
from pixcade.errors import PixcadeError

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """`shards/{00000..00002}.tar` -> the three names; also `{a,b}` lists, several groups.

    A numeric range keeps zero padding when an endpoint is written with a leading zero.
    """
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    rng = _RANGE.match(body)
    if rng:
        a, b = rng.group(1), rng.group(2)
        lo, hi = int(a), int(b)
        step = 1 if hi >= lo else -1
        padded = any(len(s.lstrip("-")) > 1 and s.lstrip("-").startswith("0") for s in (a, b))
        width = max(len(a), len(b)) if padded else 0
        options = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        raise PixcadeError(f"bad brace pattern {pattern!r}: expected {{A..B}} or {{x,y,...}}")
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [s for opt in options for s in expand_braces(head + opt + tail)]


def list_shards(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard paths from a brace pattern, a glob, a directory of .tar files, a .tar or a list."""
    if isinstance(source, (list, tuple)):
        shards = [s for item in source for s in list_shards(item)]
    else:
        text = os.fspath(source)
        if "{" in text:
            shards = expand_braces(text)
        elif os.path.isdir(text):
            shards = sorted(glob.glob(os.path.join(glob.escape(text), "*.tar")))
        elif any(c in text for c in "*?[") and not os.path.exists(text):
            shards = sorted(glob.glob(text))
            if not shards:
                raise PixcadeError(f"no files match {text!r}")
        else:
            shards = [text]
    if not shards:
        where = "the shard list" if isinstance(source, (list, tuple)) else repr(os.fspath(source))
        raise PixcadeError(f"no .tar shards in {where}")
    for shard in shards:
        if not shard.endswith(".tar"):
            raise PixcadeError(f"{shard!r} is not a .tar shard")
        if not os.path.isfile(shard):
            raise PixcadeError(f"shard not found: {shard}")
    return shards


def split_key(name: str) -> tuple[str, str]:
    """`dir/000001.seg.png` -> (`dir/000001`, `seg.png`)."""
    directory, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return os.path.join(directory, stem) if directory else stem, ext.lower()


def iter_tar_groups(shard: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, {ext: bytes}) for each sample of a shard, read as a stream (no seeking)."""
    with open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        key, fields = None, {}
        for member in tar:
            if not member.isfile():
                continue
            k, ext = split_key(member.name)
            if k != key:
                if key is not None:
                    yield key, fields
                key, fields = k, {}
            data = tar.extractfile(member)
            fields[ext] = data.read() if data is not None else b""
        # tarfile ends quietly when a file stops inside or between headers; a whole
        # archive has a two-block end marker after its last member, so check for it
        # (uncompressed shards only: offsets count decompressed bytes).
        if getattr(tar.fileobj, "comptype", "tar") == "tar" and os.path.getsize(shard) < tar.offset + 1024:
            raise tarfile.ReadError("truncated: no end-of-archive marker")
        if key is not None:
            yield key, fields


def _caption(shard: str, key: str, fields: dict[str, Any]) -> str:
    if "txt" not in fields:
        raise PixcadeError(f"missing caption: sample {key!r} in shard {shard} has no .txt member")
    try:
        return fields["txt"].decode("utf-8").strip()
    except UnicodeDecodeError as err:
        raise PixcadeError(f"caption of sample {key!r} in shard {shard} is not UTF-8: {err}") from None


def _decode_group(shard: str, key: str, fields: dict[str, Any]) -> dict[str, Any] | Skipped:
    name = f"{shard}:{key}"
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in fields), None)
    if image_ext is None:
        return skip(name, f"no image field (found: {', '.join(sorted(fields)) or 'nothing'})")
    caption = _caption(shard, key, fields)
    image = decode_image(fields[image_ext], name)
    if isinstance(image, Skipped):
        return image
    return {"image": image, "caption": caption, "key": name}


class ShardDataset(IterableDataset):
    """Streams samples from tar shards; this rank's and worker's share only.

    Call `set_epoch(e)` before creating each epoch's DataLoader iterator (and don't use
    `persistent_workers`, whose workers keep the old epoch): with `shuffle` the shard
    order and the in-worker shuffle buffer are seeded by (seed, epoch), so every rank
    agrees on the shard order and a run can be repeated.
    """

    def __init__(
        self,
        shards: list[str],
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        transform: Callable[[dict[str, Any]], Any] | None = None,
    ):
        self.shards = list(shards)
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.seed, self.epoch = seed, 0
        self.transform = transform

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(epoch)

    def captions(self) -> Iterator[str]:
        """Every caption of every shard (all ranks' shares, in shard order), read as the
        samples' captions are but without decoding any image: what to embed ahead.

        Like iteration, a sample without an image field is passed over and a corrupt or
        truncated shard loses only its remaining samples; such shards are listed, with why,
        in ``unreadable_shards`` for the caller to report.
        """
        self.unreadable_shards: list[tuple[str, str]] = []
        for shard in self.shards:
            try:
                for key, fields in iter_tar_groups(shard):
                    if any(e in fields for e in IMAGE_EXTENSIONS):
                        yield _caption(shard, key, fields)
            except (tarfile.TarError, OSError, EOFError) as err:
                self.unreadable_shards.append((shard, str(err) or type(err).__name__))

    def assignment(self, worker: int, num_workers: int) -> tuple[list[str], int, int]:
        """(shards this reader streams, n, j): it keeps the samples whose index % n == j."""
        shards = list(self.shards)
        if self.shuffle:
            random.Random(stable_seed(self.seed, self.epoch, "shards")).shuffle(shards)
        readers, me = self.world_size * num_workers, self.rank * num_workers + worker
        if len(shards) < self.world_size:
            return shards, readers, me
        mine = shards[self.rank :: self.world_size]
        if len(mine) < num_workers:
            return mine, num_workers, worker
        return mine[worker::num_workers], 1, 0

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shards, n, j = self.assignment(worker, num_workers)
        samples = self._read(shards, n, j)
        if self.shuffle and self.shuffle_buffer > 1:
            rng = random.Random(stable_seed(self.seed, self.epoch, self.rank, worker, "buffer"))
            samples = _buffer_shuffle(samples, self.shuffle_buffer, rng)
        for sample in samples:
            if self.transform is not None and not isinstance(sample, Skipped):
                sample = self.transform(sample)
            yield sample

    def _read(self, shards: list[str], n: int, j: int) -> Iterator[Any]:
        counter = itertools.count()
        for shard in shards:
            try:
                for key, fields in iter_tar_groups(shard):
                    if next(counter) % n == j:
                        yield _decode_group(shard, key, fields)
            except (tarfile.TarError, OSError, EOFError) as err:
                # A truncated or corrupt shard loses its remaining samples, not the run.
                yield skip(shard, f"unreadable shard: {type(err).__name__}: {err}")


def _buffer_shuffle(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer

