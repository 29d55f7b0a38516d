"""Sharded training checkpoints through ``torch.distributed.checkpoint`` (DCP).

Same directory names as `pixcade.train.checkpoint` (``checkpoints/step-NNNNNNNN/``), other
contents: each rank writes its own shards of the model, the EMA and the optimizer state
(``__R_0.distcp`` files, fsynced by DCP) plus DCP's ``.metadata``; rank 0 writes
``state.json`` (step, optimizer param groups, each rank's data position and RNG states).
Tensors are stored by their parameter names (FQNs), not by rank, so a checkpoint loads at
any number of ranks, sharded or not: DCP reads the pieces each rank's shard needs.

Atomic like the unsharded format: every rank writes into ``.tmp-step-N`` (all ranks share
the filesystem), and only after every rank has finished does rank 0 add ``state.json``,
fsync and rename the directory to ``step-N``. A crash (kill -9 of any rank) during the save
leaves a ``.tmp-*`` directory that is ignored and removed by the next save, and the
previous checkpoints as they were.

DCP's ``.metadata`` is a pickle (torch's format, not ours): resume and export only
checkpoints your own runs wrote.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from pixcade.errors import PixcadeError
from pixcade.io import fsync_file
from pixcade.train import checkpoint as ckpt
from pixcade.train import distributed as dist
from pixcade.train.distributed import DistInfo

FORMAT = "pixcade-sharded-checkpoint"
_METADATA = ".metadata"


@contextmanager
def _quiet_single_process() -> Iterator[None]:
    # DCP warns on every save/load without a process group, which is the normal case for
    # one process and for export.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def is_sharded_checkpoint(path: str | Path) -> bool:
    return (Path(path) / _METADATA).is_file()


def save_sharded(
    info: DistInfo,
    directory: str | Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: dict[str, torch.Tensor],
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Collective: every rank calls it with its shards; ``state`` (JSON) is rank 0's.
    Returns the checkpoint path on every rank; pruning keeps the newest ``keep``."""
    directory = Path(directory)
    final = directory / ckpt.checkpoint_name(step)
    tmp = directory / f"{ckpt.TMP_PREFIX}{final.name}"
    # Every rank must take the same branch: rank 0 decides.
    exists = dist.broadcast_object(info, final.exists())
    if exists:  # saved at this very step already (e.g. a signal right after a save)
        return final
    if info.is_main:
        directory.mkdir(parents=True, exist_ok=True)
        ckpt.remove_partial(directory)
        tmp.mkdir()
    dist.barrier(info)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _quiet_single_process():
        dcp.save({"model": model_sd, "optimizer": optim_sd["state"], "ema": ema}, checkpoint_id=str(tmp),
                 no_dist=not info.enabled)
    if info.is_main:
        ckpt.test_write_pause(tmp)
        state_path = tmp / "state.json"
        state_path.write_text(json.dumps({**state, "format": FORMAT, "step": step,
                                          "param_groups": ckpt.json_param_groups(optim_sd["param_groups"])}, indent=1))
        for p in tmp.iterdir():
            if p.is_file():
                fsync_file(p)
        ckpt.publish(tmp, final, keep)
    dist.barrier(info)
    return final


def read_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as err:
        raise PixcadeError(f"cannot read checkpoint {path}: {err}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise PixcadeError(f"{path} is not a sharded checkpoint (its state.json is not one's)")
    return state


def load_sharded(
    path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, ema: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """Collective: load a checkpoint into this rank's (sharded or whole) model, optimizer
    and EMA tensors, in place, whatever number of ranks wrote it. Returns state.json."""
    path = Path(path)
    state = read_state(path)
    model_sd, optim_sd = get_state_dict(model, optimizer)  # creates the optimizer state to fill
    target = {"model": model_sd, "optimizer": optim_sd["state"], "ema": ema}
    try:
        with _quiet_single_process():
            dcp.load(target, checkpoint_id=str(path), no_dist=not torch.distributed.is_initialized())
        set_state_dict(model, optimizer, model_state_dict=target["model"],
                       optim_state_dict={"state": target["optimizer"], "param_groups": state["param_groups"]},
                       options=StateDictOptions(strict=True))
    except (CheckpointException, RuntimeError, KeyError, ValueError) as err:
        raise PixcadeError(f"checkpoint {path} does not fit this stage's config: {_reason(err)[:200]}") from None
    return state


def _reason(err: Exception) -> str:
    if isinstance(err, CheckpointException):  # one wrapped exception per failed rank
        for failure in err.failures.values():  # (exception, traceback) or a wrapper of it
            inner = failure[0] if isinstance(failure, tuple) else getattr(failure, "exception", failure)
            return str(inner)
    return str(err)


def check(path: str | Path) -> None:
    """Raises PixcadeError unless the checkpoint's state.json and DCP metadata read back."""
    read_state(path)
    try:
        dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as err:  # DCP's metadata reader unpickles; any failure means damaged
        raise PixcadeError(f"cannot read checkpoint {path}: {type(err).__name__}: {str(err)[:120]}") from None


def read_full(path: str | Path, part: str) -> dict[str, torch.Tensor]:
    """One part ("model", "ema") of a sharded checkpoint as whole CPU tensors, in one
    process without a process group (what `pixcade train export` needs)."""
    path = Path(path)
    try:
        meta = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    except (OSError, ValueError, RuntimeError) as err:
        raise PixcadeError(f"cannot read checkpoint {path}: {err}") from None
    prefix = part + "."
    target = {k[len(prefix):]: torch.empty(tuple(m.size), dtype=m.properties.dtype)
              for k, m in meta.items() if k.startswith(prefix) and hasattr(m, "size")}
    if not target:
        raise PixcadeError(f"checkpoint {path} holds no {part!r} tensors")
    with _quiet_single_process():
        dcp.load({part: target}, checkpoint_id=str(path), no_dist=True)
    return target
