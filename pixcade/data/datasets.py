"""Image-caption data behind one interface: `open_dataset(source)`.

Sources (the format is told from the path):
- a folder of images (png/jpg/jpeg/webp, searched recursively) each with a same-named
  `.txt` caption beside it (`a/0001.png` + `a/0001.txt`); other files (such as the
  shapes generator's `.json` scene files) are ignored. Key: the path relative to the
  folder without extension.
- a manifest, `.jsonl` (one object per line) or `.csv` (with a header row), of image path
  (relative to the manifest's folder, or absolute) and caption. The image column/key is
  `image` (or `file_name`, as in Hugging Face image folders), the caption column/key is
  `caption` (or `text`). Key: the image path as written; an image listed again (several
  captions per image, as in COCO) gets `#2`, `#3`, ... appended.
- WebDataset tar shards: a brace pattern (`shards/{00000..00009}.tar`), a glob, a
  directory of .tar files, one .tar, or a list of these; see `pixcade.data.webdataset`.
  Key: `<shard path>:<sample key>`.

Folders and manifests give a map-style `torch.utils.data.Dataset`; shards an
`IterableDataset`. Both yield `{"image": PIL RGB, "caption": str, "key": str}` (or, with
`transform`, its result), or a `pixcade.data.samples.Skipped` marker for an unreadable
image; `SkipStats.track` counts those and reports them at the end.

A missing caption (no .txt beside an image; in a manifest an absent or null caption, or
a CSV row too short to have one; a shard sample without .txt) is a PixcadeError naming
the file. An empty caption (empty .txt, "" in a manifest) is a caption (the
unconditional one), not an error.

Distributed use: give each rank its `rank` and `world_size`. A map-style dataset then
holds samples rank::world_size of the (epoch-shuffled) list, so ranks may differ in
length by one and no sample is repeated; use a plain sampler (or keep rank=0,
world_size=1 and use torch's `DistributedSampler`, which pads by repeating samples).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from typing import Any, Callable, Sequence

from torch.utils.data import Dataset

from pixcade.data.samples import IMAGE_EXTENSIONS, Skipped, decode_image, stable_seed
from pixcade.data.webdataset import ShardDataset, list_shards
from pixcade.errors import PixcadeError
from pixcade.io import read_text

IMAGE_KEYS = ("image", "file_name")
CAPTION_KEYS = ("caption", "text")

# (key, image path, caption text or None, caption file path or None)
Entry = tuple[str, str, "str | None", "str | None"]
Transform = Callable[[dict[str, Any]], Any]


class CaptionedImages(Dataset):
    """Map-style dataset over listed (image, caption) pairs; this rank's share only."""

    def __init__(
        self,
        entries: list[Entry],
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        transform: Transform | None = None,
    ):
        self.entries = entries
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.transform = transform
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffles (with `shuffle`) from (seed, epoch): the same order on every rank."""
        self.epoch = epoch
        order = list(range(len(self.entries)))
        if self.shuffle:
            random.Random(stable_seed(self.seed, epoch, "samples")).shuffle(order)
        self._order = order[self.rank :: self.world_size]
        if hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self._order)

    def captions(self) -> list[str]:
        """Every caption of the source (all ranks' shares, in listing order), read as
        `__getitem__` reads them but without decoding any image: what to embed ahead."""
        return [caption if caption is not None else _read_caption(caption_path)
                for _key, _image, caption, caption_path in self.entries]

    def __getitem__(self, index: int) -> Any:
        key, image_path, caption, caption_path = self.entries[self._order[index]]
        if caption is None:
            caption = _read_caption(caption_path)
        image = decode_image(image_path, key)
        if isinstance(image, Skipped):
            return image
        sample = {"image": image, "caption": caption, "key": key}
        return self.transform(sample) if self.transform is not None else sample


def open_dataset(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = False,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    transform: Transform | None = None,
) -> CaptionedImages | ShardDataset:
    """Opens a folder, a .jsonl/.csv manifest or tar shards (see the module docstring).

    `shuffle`: a fresh order each epoch (`set_epoch`), deterministic from `seed`; for
    shards that is the shard order plus a buffer of `shuffle_buffer` samples per worker.
    `transform` is applied to each readable sample (in the data-loader worker).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise PixcadeError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if shuffle_buffer < 0:
        raise PixcadeError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
    split = dict(rank=rank, world_size=world_size, shuffle=shuffle, seed=seed, transform=transform)
    if isinstance(source, (list, tuple)) or _looks_like_shards(os.fspath(source)):
        return ShardDataset(list_shards(source), shuffle_buffer=shuffle_buffer, **split)
    path = os.fspath(source)
    if not os.path.exists(path):
        raise PixcadeError(f"dataset not found: {path}")
    if os.path.isdir(path):
        return CaptionedImages(scan_folder(path), **split)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".jsonl":
        return CaptionedImages(read_jsonl(path), **split)
    if suffix == ".csv":
        return CaptionedImages(read_csv(path), **split)
    raise PixcadeError(
        f"unknown dataset format: {path} (expected a folder of images + .txt captions, "
        "a .jsonl or .csv manifest, or .tar shards)"
    )


def _looks_like_shards(path: str) -> bool:
    if "{" in path or path.endswith(".tar"):
        return True
    if any(c in path for c in "*?[") and not os.path.exists(path):
        return True  # a glob; list_shards insists that it names .tar files
    if os.path.isdir(path):
        return any(e.name.endswith(".tar") and e.is_file() for e in os.scandir(path))
    return False


def scan_folder(folder: str) -> list[Entry]:
    """Every image under `folder` with its caption file; a missing caption is an error."""
    entries: list[Entry] = []
    seen: dict[str, str] = {}
    for directory, subdirs, files in os.walk(folder):
        subdirs.sort()
        names = set(files)
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext[1:].lower() not in IMAGE_EXTENSIONS:
                continue
            image_path = os.path.join(directory, name)
            key = os.path.relpath(os.path.join(directory, stem), folder).replace(os.sep, "/")
            if key in seen:
                raise PixcadeError(f"two images share the caption {key}.txt: {seen[key]} and {image_path}")
            seen[key] = image_path
            if stem + ".txt" not in names:
                raise PixcadeError(f"missing caption: no {stem}.txt beside {image_path}")
            entries.append((key, image_path, None, os.path.join(directory, stem + ".txt")))
    if not entries:
        raise PixcadeError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) in folder {folder}")
    return entries


def _read_caption(path: str | None) -> str:
    try:
        with open(path, encoding="utf-8") as f:  # type: ignore[arg-type]
            return f.read().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise PixcadeError(f"cannot read caption {path}: {err}") from None


def read_jsonl(manifest: str) -> list[Entry]:
    rows = []
    for line_no, line in enumerate(read_text(manifest, "manifest").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PixcadeError(f"{manifest}:{line_no}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise PixcadeError(f"{manifest}:{line_no}: expected a JSON object")
        rows.append((line_no, row))
    return _manifest_entries(manifest, rows)


def read_csv(manifest: str) -> list[Entry]:
    with io.StringIO(read_text(manifest, "manifest"), newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for wanted in (IMAGE_KEYS, CAPTION_KEYS):
            if not any(c in columns for c in wanted):
                raise PixcadeError(
                    f"{manifest}: no {' or '.join(wanted)} column (header: {', '.join(columns) or 'empty'})"
                )
        # DictReader counts the header as line 1.
        rows = [(reader.line_num, row) for row in reader]
    return _manifest_entries(manifest, rows)


def _manifest_entries(manifest: str, rows: list[tuple[int, dict[str, Any]]]) -> list[Entry]:
    base = os.path.dirname(os.path.abspath(manifest))
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    for line_no, row in rows:
        image = _first(row, IMAGE_KEYS)
        if not isinstance(image, str) or not image:
            raise PixcadeError(f"{manifest}:{line_no}: no image path (key {' or '.join(IMAGE_KEYS)})")
        caption = _first(row, CAPTION_KEYS)
        if caption is None:
            raise PixcadeError(
                f"missing caption: {manifest}:{line_no} ({image}) has no {' or '.join(CAPTION_KEYS)}"
            )
        seen[image] = seen.get(image, 0) + 1
        key = image if seen[image] == 1 else f"{image}#{seen[image]}"
        entries.append((key, os.path.join(base, image), str(caption).strip(), None))
    if not entries:
        raise PixcadeError(f"empty manifest: {manifest}")
    return entries


def _first(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if row.get(name) is not None:
            return row[name]
    return None
