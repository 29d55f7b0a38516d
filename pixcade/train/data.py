"""An endless, resumable stream of training batches for one rank, and the loop's view of it.

The position is (epoch, batches taken in that epoch). Every epoch is a fresh,
deterministic pass over this rank's share of the data (the dataset reshuffles itself from
(seed, epoch) in `set_epoch`), so resuming rebuilds the epoch's order and skips the
batches already taken: for a map-style dataset by starting the index sampler past them,
for a stream of shards by reading and dropping them. Per-sample randomness (random crops)
lives in the transform, which seeds itself from the sample and the epoch, not from the
worker, so the batches do not depend on when the loader was started.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TextIO

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from pixcade.data.samples import SkipStats
from pixcade.errors import PixcadeError
from pixcade.text.cache import EmbeddingCache
from pixcade.train.metrics import MetricsLog
from pixcade.train.setup import embed_batch


@dataclass
class DataPosition:
    epoch: int = 0
    batches: int = 0  # batches of this epoch already consumed

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self.batches}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataPosition":
        return cls(epoch=int(d["epoch"]), batches=int(d["batches"]))


def _quiet_worker(_: int) -> None:
    # Ctrl-C reaches the whole process group; the trainer finishes its step and saves,
    # then shuts the workers down itself, so they must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class BatchStream:
    """Yields collated batches forever; `position` always describes what was yielded."""

    def __init__(
        self,
        dataset: Dataset | IterableDataset,
        *,
        batch_size: int,
        collate: Callable[[list[Any]], Any],
        seed: int = 0,
        num_workers: int = 0,
        position: DataPosition | None = None,
        max_empty_epochs: int = 1,
    ):
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate = collate
        self.seed = seed
        self.num_workers = num_workers
        self.position = position or DataPosition()
        self.max_empty_epochs = max_empty_epochs
        self._iter: Iterator[Any] | None = None
        self._loader: Any = None

    @property
    def is_map_style(self) -> bool:
        return not isinstance(self.dataset, IterableDataset)

    def _open_epoch(self) -> Iterator[Any]:
        pos = self.position
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(pos.epoch)
        common = dict(
            batch_size=self.batch_size, collate_fn=self.collate, num_workers=self.num_workers,
            worker_init_fn=_quiet_worker if self.num_workers else None,
            # Its own generator: creating a loader must not consume the global RNG, or
            # a resumed run (which opens its loader at another moment) would diverge.
            generator=torch.Generator().manual_seed(self.seed * 7_919 + pos.epoch),
        )
        if self.is_map_style:
            start = pos.batches * self.batch_size
            loader = DataLoader(self.dataset, sampler=range(start, len(self.dataset)), **common)
            self._loader = loader
            return iter(loader)
        loader = DataLoader(self.dataset, **common)
        self._loader = loader
        it = iter(loader)
        for _ in range(pos.batches):  # a stream can't seek: read past what was consumed
            if next(it, None) is None:
                break
        return it

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> Any:
        empty = 0
        while True:
            if self._iter is None:
                self._iter = self._open_epoch()
            batch = next(self._iter, None)
            if batch is not None:
                self.position.batches += 1
                return batch
            if self.position.batches == 0:
                empty += 1
                if empty > self.max_empty_epochs:
                    raise PixcadeError("the dataset yields no samples for this rank")
            self.position = DataPosition(self.position.epoch + 1, 0)
            self.close()

    def close(self) -> None:
        """Drops the epoch's loader (and so its worker processes)."""
        self._iter = None
        self._loader = None


class Batches:
    """This rank's micro-batches for the loop: non-empty, on the device, captions embedded
    from the cache; each batch's sample keys go to ``keys_log`` when one is given."""

    def __init__(self, stream: BatchStream, cache: EmbeddingCache, device: torch.device, keys_log: TextIO | None):
        self.stream, self.cache, self.device, self.keys_log = stream, cache, device, keys_log
        self.skips = SkipStats()

    def next(self, step: int) -> dict[str, torch.Tensor | None]:
        while True:
            batch = next(self.stream)
            self.skips.update(batch)
            if batch["key"]:
                break
        if self.keys_log is not None:
            self.keys_log.write(json.dumps({"step": step, "epoch": self.stream.position.epoch,
                                            "keys": batch["key"]}) + "\n")
        emb, mask = embed_batch(self.cache, batch["caption"], self.device)
        lowres = batch["lowres"].to(self.device, non_blocking=True) if "lowres" in batch else None
        return {"images": batch["image"].to(self.device, non_blocking=True), "text_emb": emb, "text_mask": mask,
                "lowres": lowres}

    def close(self, log: MetricsLog) -> None:
        self.stream.close()
        if self.skips.count:
            log.message(f"pixcade train: {self.skips.summary()}")
