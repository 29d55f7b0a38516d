"""How a run spreads the U-Net over its ranks, and the checkpoint format that goes with it.

``train.parallel``:

- ``ddp``: every rank holds the whole model, optimizer state and EMA; gradients are
  all-reduced (PyTorch's DistributedDataParallel). Checkpoints: `pixcade.train.checkpoint`
  (safetensors, written by rank 0).
- ``fsdp``: every rank holds 1/N of each (`pixcade.train.fsdp`, FSDP2); the EMA is sharded
  alike. Checkpoints: `pixcade.train.sharded_checkpoint` (DCP, every rank writes its
  shards; loads at any number of ranks). One process runs the plain module with the same
  checkpoint format, so a sharded run can be resumed, inspected or exported on one machine.

The trainer talks to `Parallel` and never to the engines, so it does not branch on them.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.nn.parallel import DistributedDataParallel

from pixcade.errors import PixcadeError
from pixcade.nn.unet import EfficientUNet
from pixcade.train import checkpoint as ckpt
from pixcade.train import distributed as dist
from pixcade.train import fsdp
from pixcade.train import sharded_checkpoint as sharded
from pixcade.train.config import PARALLEL
from pixcade.train.distributed import DistInfo
from pixcade.train.ema import EMA

T = TypeVar("T")


class Parallel:
    """Wraps ``net`` in place for ``kind`` over ``info``'s ranks.

    ``net`` is what the optimizer and the EMA see (its parameters are shards under FSDP);
    ``forward_net`` is what computes the loss (the DDP wrapper under DDP).
    """

    def __init__(self, net: nn.Module, info: DistInfo, *, kind: str, bf16: bool, checkpoint_res_blocks: bool):
        if kind not in PARALLEL:
            raise PixcadeError(f"unknown train.parallel {kind!r} (choose from {', '.join(PARALLEL)})")
        self.kind, self.info, self.net = kind, info, net
        if checkpoint_res_blocks:
            fsdp.checkpoint_res_blocks_of(net)
        self.sharded = kind == "fsdp" and info.enabled
        if self.sharded:
            fsdp.shard_unet(net, fsdp.device_mesh(info.device, info.world_size), bf16=bf16)
        self.forward_net: nn.Module = net
        if kind == "ddp" and info.enabled:
            ids = [info.device.index] if info.device.type == "cuda" else None
            self.forward_net = DistributedDataParallel(net, device_ids=ids)

    @contextmanager
    def micro_batch(self, last: bool) -> Iterator[None]:
        """Around one micro-batch's backward: gradients are synchronised on the last only."""
        if isinstance(self.forward_net, DistributedDataParallel):
            with nullcontext() if last else self.forward_net.no_sync():
                yield
            return
        fsdp.set_gradient_sync(self.net, last)
        yield

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Clip the global gradient norm (over every shard); returns it as a plain tensor."""
        return fsdp.local(torch.nn.utils.clip_grad_norm_(self.net.parameters(), max_norm))

    def full(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Whole tensors of a model-shaped state (the EMA's): collective under FSDP."""
        return fsdp.full_tensors(state, to_cpu=False) if self.sharded else state

    def edit_whole(self, edit: Callable[[nn.Module], T]) -> T:
        """Run ``edit`` on the network with whole weights (e.g. loading a file into it) and
        keep what it changed. Under FSDP that is a whole copy (every rank builds one from
        the gathered shards), whose weights are then sharded back."""
        if not self.sharded:
            return edit(self.net)
        with torch.random.fork_rng(devices=[]):  # building the copy must not move the training's RNG
            whole = EfficientUNet(self.net.config).to(self.info.device)
        whole.load_state_dict(self.full(self.net.state_dict()))
        result = edit(whole)
        set_model_state_dict(self.net, whole.state_dict(), options=StateDictOptions(full_state_dict=True))
        return result

    # -- checkpoints -------------------------------------------------------------------------

    def save(self, directory: Path, step: int, *, optimizer: torch.optim.Optimizer, ema: EMA,
             state: dict[str, Any], keep: int) -> Path | None:
        """Collective; ``state`` (JSON) is rank 0's. Returns the path on rank 0."""
        if self.kind == "fsdp":
            path = sharded.save_sharded(self.info, directory, step, model=self.net, optimizer=optimizer,
                                        ema=ema.state_dict(), state=state, keep=keep)
            return path if self.info.is_main else None
        path = None
        if self.info.is_main:
            path = ckpt.save_checkpoint(directory, step, model=self.net.state_dict(), ema=ema.state_dict(),
                                        optimizer=optimizer.state_dict(), state=state, keep=keep)
        dist.barrier(self.info)
        return path

    def load(self, path: Path, *, optimizer: torch.optim.Optimizer, ema: EMA) -> dict[str, Any]:
        """Collective: load either format into this rank's model, optimizer and EMA (the EMA's
        update count included). Returns the checkpoint's state, with its ``step``."""
        if sharded.is_sharded_checkpoint(path):
            state = sharded.load_sharded(path, model=self.net, optimizer=optimizer, ema=ema.state_dict())
            ema.num_updates = int(state["ema_updates"])
            return state
        if self.sharded:
            raise PixcadeError(f"checkpoint {path} was written by a ddp run; resume it with train.parallel "
                               "'ddp' (an fsdp run reads sharded checkpoints)")
        c = ckpt.load_checkpoint(path)
        try:
            self.net.load_state_dict(c.model)
            optimizer.load_state_dict(c.optimizer)
            ema.load_state_dict(c.ema, c.state["ema_updates"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise PixcadeError(f"checkpoint {path} does not fit this stage's config: {str(err)[:200]}") from None
        return {**c.state, "step": c.step}


def check_checkpoint(path: Path) -> None:
    """Raises PixcadeError unless the checkpoint at ``path``, of either format, reads back."""
    if sharded.is_sharded_checkpoint(path):
        sharded.check(path)
    else:
        ckpt.load_checkpoint(path)
