"""Embedding cache: precomputed text-encoder outputs, so training never runs the encoder.

Layout of a cache directory::

    index.json                      shard list (sha256, size, encoder) + key -> (shard, offset, n)
    shard-000001.safetensors        "embeddings" [total_tokens, D]: every caption's real tokens,
    shard-000002.safetensors        concatenated; a caption is rows offset .. offset + n
    build.lock                      held (flock) while a build writes

A key is a hash of (encoder name, max length, caption), so one directory can hold several
encoders and a changed encoder or max length is a miss rather than a silent reuse. Only
real tokens are stored (no padding to max length); an empty caption has n = 0.

Shards are immutable: a build writes new shards and never rewrites old ones. Every write
goes to a temporary file that is then renamed (``os.replace``), the index is rewritten after
each shard, so an interrupted build keeps what it finished. Each shard's sha256 is in the
index and is checked before a shard is first read, so a truncated or corrupted shard is
detected (``get`` refuses to read it; ``build`` recomputes its captions).

Nothing the cache cannot read is ever deleted. Each shard also lists its own entries (key,
offset, n) in its safetensors metadata, so ``build`` rebuilds an unreadable index from the
shards (the unreadable index kept as ``index.json.unreadable-<time>``) and adopts a shard
whose build was killed before the index named it. What it can neither verify nor adopt (a
damaged shard, a file named like a shard that is none) is moved into ``set-aside/``, never
removed. An index of another format version is refused as a whole: not read, not touched.
Builds take an exclusive lock on ``build.lock`` (POSIX ``flock``) and re-read the index
under it, so several processes (e.g. two stages starting to train at once) may build into
one directory: each adds what the others have not; any number of readers.

Storage precision: float16 (half the disk and page cache of float32). Its relative rounding
error is at most 2**-11 ~ 5e-4, below the error of running the encoder in bfloat16 (2**-8)
and far below what the U-Net's cross-attention can resolve. A shard whose values exceed
float16's range (+-65504) is stored in float32 instead, so nothing overflows to inf.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from pixcade.errors import PixcadeError
from pixcade.io import atomic_write_text, save_tensors, sha256_file
from pixcade.text.encoders import DEFAULT_BATCH_SIZE, TextEncoder, _check_prompts, _short

INDEX_NAME = "index.json"
LOCK_NAME = "build.lock"
_FORMAT = "pixcade-embedding-cache"
_VERSION = 1
_TENSOR = "embeddings"
_SHARD_RE = re.compile(r"^shard-(\d+)\.safetensors$")
SET_ASIDE = "set-aside"
DEFAULT_SHARD_BYTES = 256 << 20


def cache_key(encoder_name: str, max_length: int, caption: str) -> str:
    """The cache key of one caption's embedding under one encoder configuration."""
    payload = json.dumps([encoder_name, int(max_length), caption], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


class EmbeddingCache:
    """Per-caption embeddings of one encoder (``encoder_name``, ``max_length``) in ``directory``."""

    def __init__(self, directory: str | os.PathLike, encoder_name: str, max_length: int) -> None:
        self.directory = Path(directory)
        self.encoder_name = encoder_name
        self.max_length = int(max_length)
        self._handles: dict[str, object] = {}  # shard name -> open safe_open handle
        # Shards whose checksum this process (or the one that pickled us) already checked.
        self._verified: set[str] = set()
        self._index_problem: str | None = None  # why the index could not be used
        self._foreign_version: str | None = None  # set when it is another format version's
        self._index = self._load_index()

    # -- index ------------------------------------------------------------------------
    def _empty_index(self) -> dict:
        return {"format": _FORMAT, "version": _VERSION, "shards": {}, "entries": {}}

    def _load_index(self) -> dict:
        path = self.directory / INDEX_NAME
        self._index_problem = self._foreign_version = None
        if not path.is_file():
            return self._empty_index()
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            ok = (isinstance(index, dict) and index.get("format") == _FORMAT
                  and isinstance(index.get("shards"), dict) and isinstance(index.get("entries"), dict))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            ok = False
        if not ok:
            self._index_problem = (f"embedding cache index {path} is unreadable or not a pixcade cache index "
                                   "(`pixcade embed` rebuilds it from the shards)")
            return self._empty_index()
        if index.get("version") != _VERSION:
            self._index_problem = self._foreign_version = (
                f"embedding cache {self.directory} has format version {index.get('version')!r}, this pixcade "
                f"reads version {_VERSION}; it was left untouched: use another directory, or the pixcade "
                "that wrote it")
            return self._empty_index()
        return index

    def _save_index(self) -> None:
        text = json.dumps(self._index, separators=(",", ":"))
        atomic_write_text(self.directory / INDEX_NAME, text)

    def _key(self, caption: str) -> str:
        return cache_key(self.encoder_name, self.max_length, caption)

    def __len__(self) -> int:
        """Captions cached for this encoder configuration."""
        shards = {s for s, info in self._index["shards"].items()
                  if info["encoder"] == self.encoder_name and info["max_length"] == self.max_length}
        return sum(1 for shard, _, _ in self._index["entries"].values() if shard in shards)

    def keys(self) -> set[str]:
        """Cache keys (`cache_key`) of every entry, of any encoder."""
        return set(self._index["entries"])

    def missing(self, captions: Iterable[str]) -> list[str]:
        """The distinct captions (first-seen order) that have no embedding in the cache."""
        entries = self._index["entries"]
        return [c for c in dict.fromkeys(_check_prompts(list(captions))) if self._key(c) not in entries]

    # -- reading ----------------------------------------------------------------------
    def _hint(self) -> str:
        return (f"run `pixcade embed --encoder {self.encoder_name} --max-length {self.max_length} "
                f"--out {self.directory}` on your captions")

    def _open(self, shard: str):
        handle = self._handles.get(shard)
        if handle is None:
            if shard not in self._verified:
                problem = self._shard_problem(shard)
                if problem:
                    raise PixcadeError(f"{problem}; {self._hint()} to rebuild it")
                self._verified.add(shard)
            handle = safe_open(str(self.directory / shard), framework="pt")
            self._handles[shard] = handle
        return handle

    def _shard_problem(self, shard: str) -> str | None:
        """Why ``shard`` can't be trusted (missing, wrong size, checksum mismatch), or None."""
        info = self._index["shards"][shard]
        path = self.directory / shard
        if not path.is_file():
            return f"embedding cache shard {path} is missing"
        if path.stat().st_size != info["bytes"]:
            return f"embedding cache shard {path} is truncated or altered ({path.stat().st_size} bytes, expected {info['bytes']})"
        if sha256_file(path) != info["sha256"]:
            return f"embedding cache shard {path} is corrupt (sha256 mismatch)"
        return None

    def get(self, captions: Sequence[str]) -> list[torch.Tensor]:
        """One float32 ``[n_i, D]`` tensor of real-token embeddings per caption (in order)."""
        captions = _check_prompts(captions)
        if self._index_problem:
            raise PixcadeError(f"{self._index_problem}; {self._hint()}")
        entries = self._index["entries"]
        keys = [self._key(c) for c in captions]
        absent = list(dict.fromkeys(c for c, k in zip(captions, keys) if k not in entries))
        if absent:
            shown = ", ".join(repr(_short(c)) for c in absent[:3]) + (", ..." if len(absent) > 3 else "")
            raise PixcadeError(
                f"{len(absent)} caption(s) not in the embedding cache {self.directory} for encoder "
                f"{self.encoder_name!r} with max_length {self.max_length}: {shown}; {self._hint()}"
            )
        out = []
        for key in keys:
            shard, offset, n = entries[key]
            rows = self._open(shard).get_slice(_TENSOR)[offset: offset + n]
            out.append(rows.float())
        return out

    # -- writing ----------------------------------------------------------------------
    def build(self, captions: Iterable[str], encoder: TextEncoder, batch_size: int = DEFAULT_BATCH_SIZE,
              progress: bool = True, shard_bytes: int = DEFAULT_SHARD_BYTES) -> int:
        """Embed the captions not yet cached; returns how many were computed.

        Shards holding any of ``captions`` are checksum-verified first; a bad one is moved to
        ``set-aside/`` and its captions recomputed. An unreadable index is rebuilt from the
        shards; one of another format version is refused. ``shard_bytes`` bounds the size of each new shard.
        """
        if encoder.name != self.encoder_name or encoder.max_length != self.max_length:
            raise PixcadeError(
                f"encoder {encoder.name!r} with max_length {encoder.max_length} does not match this cache's "
                f"{self.encoder_name!r} with max_length {self.max_length}"
            )
        captions = list(dict.fromkeys(_check_prompts(list(captions))))
        with self._writing():
            return self._build_locked(captions, encoder, batch_size, progress, shard_bytes)

    def absorb(self, part: "EmbeddingCache") -> int:
        """Bring the shards of another cache directory ``part`` (one rank's share of a
        distributed build) into this one; returns how many captions this cache gained.

        Shards are hard-linked (copied across filesystems) under new names, then adopted
        into the index one at a time, so a crash midway leaves shards that the next build or
        absorb adopts. A shard that fails its checksum is left in ``part`` with a warning;
        one whose captions are all here already is skipped. ``part`` itself is not changed.
        """
        if (part.encoder_name, part.max_length) != (self.encoder_name, self.max_length):
            raise PixcadeError(f"cannot merge cache {part.directory} ({part.encoder_name!r}, {part.max_length}) "
                               f"into {self.directory} ({self.encoder_name!r}, {self.max_length})")
        with part._writing():  # shards a killed build wrote but did not index yet
            part._adopt_orphans()
            part._save_index()
        added = 0
        with self._writing():
            self._adopt_orphans()
            entries = self._index["entries"]
            for shard in sorted(part._index["shards"]):
                keys = [k for k, (s, _, _) in part._index["entries"].items() if s == shard and k not in entries]
                if not keys:
                    continue
                problem = part._shard_problem(shard)
                if problem:
                    warnings.warn(f"{problem}; not merged into {self.directory}", stacklevel=2)
                    continue
                name = self._next_shard_name()
                try:
                    os.link(part.directory / shard, self.directory / name)
                except OSError:
                    shutil.copyfile(part.directory / shard, self.directory / name)
                if not self._adopt(name):
                    raise PixcadeError(f"embedding cache shard {part.directory / shard} does not describe itself")
                self._verified.add(name)
                self._save_index()
                added += len(keys)
        return added

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """The build lock, with the index re-read under it (another process may have
        written since this object read it)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._build_lock():
            self._index = self._load_index()
            if self._foreign_version:
                raise PixcadeError(self._foreign_version)
            if self._index_problem:
                self._rebuild_index()
            yield

    @contextlib.contextmanager
    def _build_lock(self) -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # not POSIX: one writer at a time is then the caller's business
            yield
            return
        with open(self.directory / LOCK_NAME, "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _build_locked(self, captions: list[str], encoder: TextEncoder, batch_size: int, progress: bool,
                      shard_bytes: int) -> int:
        known = len(self._index["shards"])
        self._adopt_orphans()
        if len(self._index["shards"]) != known:
            self._save_index()
        self._drop_bad_shards(captions)
        entries = self._index["entries"]
        todo = [c for c in captions if self._key(c) not in entries]
        if not todo:
            return 0
        # Neighbours of similar length batch with little padding.
        todo.sort(key=len)

        pending: list[tuple[str, torch.Tensor]] = []
        pending_bytes = 0
        with tqdm(total=len(todo), desc=f"embedding captions ({self.encoder_name})", unit="caption",
                  disable=not progress) as bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start: start + batch_size]
                for caption, emb in zip(chunk, encoder.encode_each(chunk, batch_size=batch_size)):
                    pending.append((caption, emb))
                    pending_bytes += emb.numel() * 2
                if pending_bytes >= shard_bytes:
                    self._write_shard(pending, encoder.dim)
                    pending, pending_bytes = [], 0
                bar.update(len(chunk))
            if pending:
                self._write_shard(pending, encoder.dim)
        return len(todo)

    def _next_shard_name(self) -> str:
        numbers = [int(m.group(1)) for p in self.directory.iterdir() if (m := _SHARD_RE.match(p.name))]
        numbers += [int(_SHARD_RE.match(s).group(1)) for s in self._index["shards"] if _SHARD_RE.match(s)]
        return f"shard-{max(numbers, default=0) + 1:06d}.safetensors"

    def _write_shard(self, items: list[tuple[str, torch.Tensor]], dim: int) -> None:
        name = self._next_shard_name()
        rows = torch.cat([e for _, e in items], dim=0) if items else torch.zeros(0, dim)
        # float16 unless something would overflow it (see module docstring).
        fits = rows.numel() == 0 or rows.abs().max().item() <= torch.finfo(torch.float16).max
        rows = rows.to(torch.float16 if fits else torch.float32).contiguous()
        entries, offset = [], 0
        for caption, emb in items:
            entries.append([self._key(caption), offset, int(emb.shape[0])])
            offset += int(emb.shape[0])
        # The shard describes itself, so a lost index can be rebuilt from the shards.
        metadata = {"encoder": self.encoder_name, "max_length": str(self.max_length),
                    "entries": json.dumps(entries, separators=(",", ":"))}
        path = self.directory / name
        save_tensors(path, {_TENSOR: rows}, metadata=metadata)
        self._add_shard(name, self.encoder_name, self.max_length, dim, str(rows.dtype), entries)
        self._verified.add(name)
        self._save_index()

    def _add_shard(self, name: str, encoder: str, max_length: int, dim: int, dtype: str,
                   entries: list[list]) -> None:
        path = self.directory / name
        self._index["shards"][name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size,
                                       "encoder": encoder, "max_length": max_length,
                                       "dim": dim, "dtype": dtype.removeprefix("torch.")}
        for key, offset, n in entries:
            self._index["entries"].setdefault(key, [name, offset, n])

    def _adopt(self, name: str) -> bool:
        """Add the self-describing shard ``name`` to the index; False if it is none."""
        try:
            with safe_open(str(self.directory / name), framework="pt") as f:
                meta = f.metadata() or {}
                shape, dtype = f.get_slice(_TENSOR).get_shape(), f.get_slice(_TENSOR).get_dtype()
            entries = json.loads(meta["entries"])
            max_length = int(meta["max_length"])
            ok = (len(shape) == 2 and isinstance(entries, list)
                  and all(isinstance(e, list) and len(e) == 3 and isinstance(e[0], str)
                          and isinstance(e[1], int) and isinstance(e[2], int)
                          and 0 <= e[1] and 0 <= e[2] and e[1] + e[2] <= shape[0] for e in entries))
        except (OSError, ValueError, KeyError, TypeError, SafetensorError):
            return False
        if ok:
            torch_dtype = {"F16": "float16", "F32": "float32"}.get(dtype, dtype)
            self._add_shard(name, str(meta["encoder"]), max_length, int(shape[1]), torch_dtype, entries)
        return ok

    def _set_aside(self, name: str, why: str) -> None:
        """Move ``name`` (unusable, but maybe still someone's data) into set-aside/."""
        aside = self.directory / SET_ASIDE
        aside.mkdir(exist_ok=True)
        target = aside / name
        if target.exists():
            target = aside / f"{name}.{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        os.replace(self.directory / name, target)
        warnings.warn(f"{why}; moved it to {target}", stacklevel=4)

    def _rebuild_index(self) -> None:
        """Replace an unreadable index by one read from the shards; keeps the old index file."""
        path = self.directory / INDEX_NAME
        kept = path.with_name(f"{INDEX_NAME}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(path, kept)
        self._index, self._index_problem = self._empty_index(), None
        self._verified.clear()
        self._adopt_orphans()
        self._save_index()
        warnings.warn(f"embedding cache index was unreadable (kept as {kept}); rebuilt it from "
                      f"{len(self._index['shards'])} shard(s)", stacklevel=5)  # past _writing and contextlib

    def _drop_bad_shards(self, captions: list[str]) -> None:
        entries = self._index["entries"]
        wanted = {entries[k][0] for k in (self._key(c) for c in captions) if k in entries}
        bad = {}
        for shard in sorted(wanted):
            if shard in self._verified:
                continue
            problem = self._shard_problem(shard)
            if problem:
                bad[shard] = problem
            else:
                self._verified.add(shard)
        if not bad:
            return
        for shard, problem in bad.items():
            del self._index["shards"][shard]
            self._set_aside(shard, f"{problem}; recomputing its captions")
        self._index["entries"] = {k: v for k, v in entries.items() if v[0] not in bad}
        self._save_index()

    def _adopt_orphans(self) -> None:
        """Shards the index does not name (a build killed between shard and index, or a lost
        index): adopted when they describe themselves, else set aside. Temporary files of
        writes killed midway are deleted (only builds write here, and this one holds the lock)."""
        for path in sorted(self.directory.iterdir()):
            if not path.is_file():
                continue
            if _SHARD_RE.match(path.name) and path.name not in self._index["shards"]:
                if not self._adopt(path.name):
                    self._set_aside(path.name, f"{path} is not a readable pixcade cache shard")
            elif path.name.startswith(".") and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)

    # DataLoader workers get a copy without open file handles (each reopens lazily) but
    # with the set of verified shards, so N workers don't re-hash the whole cache N times.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state
