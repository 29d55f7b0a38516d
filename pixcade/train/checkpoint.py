"""Training checkpoints: safetensors for tensors, JSON for the rest, written atomically.

A checkpoint is a directory ``RUN_DIR/checkpoints/step-00001000/`` holding
``model.safetensors``, ``ema.safetensors``, ``optimizer.safetensors`` (the optimizer's
tensors) and ``state.json`` (step, optimizer scalars and param groups, data positions,
RNG states, counters). It is written into a temporary sibling directory, every file and
the directory are fsynced, then the directory is renamed into place: a crash at any
moment leaves either the old set of checkpoints or the old set plus the new one, never
a half-written ``step-*`` directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from pixcade.errors import PixcadeError
from pixcade.io import fsync_file, save_tensors

_NAME = re.compile(r"^step-(\d{8,})$")
TMP_PREFIX = ".tmp-"
# Test hook: seconds to sleep in the middle of a checkpoint write, so a test can kill -9
# the process while the temporary directory is half written.
WRITE_SLEEP_ENV = "PIXCADE_TEST_CHECKPOINT_SLEEP"


@dataclass
class Checkpoint:
    path: Path
    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    state: dict[str, Any]


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_step(path: str | Path) -> int:
    """The step a checkpoint directory named by ``checkpoint_name`` was saved at."""
    match = _NAME.match(Path(path).name)
    if match is None:
        raise PixcadeError(f"{path} is not a checkpoint directory (step-NNNNNNNN)")
    return int(match.group(1))


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints under ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    ckpts = list_checkpoints(directory)
    return ckpts[-1] if ckpts else None


# -- optimizer state <-> (tensors, JSON) ----------------------------------------------------


def flatten_optimizer_state(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into safetensors-storable tensors and JSON."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in sd["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}/{key}"] = value.detach().contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": json_param_groups(sd["param_groups"]), "scalars": scalars}


def json_param_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An optimizer's param groups as JSON values (tuples such as Adam's betas as lists)."""
    return [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in groups]


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


# -- writing ----------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    # Directory fsync makes the rename durable; not every platform allows it.
    try:
        fsync_file(path)
    except OSError:
        pass


def remove_partial(directory: Path) -> None:
    """Remove the temporary directories of checkpoint writes a crash interrupted."""
    for stale in directory.glob(TMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)


def publish(tmp: Path, final: Path, keep: int) -> None:
    """Make the fully written (files fsynced) ``tmp`` the checkpoint ``final``: fsync it,
    rename it into place, fsync the parent; then delete all but the newest ``keep``."""
    _fsync_dir(tmp)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    for old in list_checkpoints(final.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def test_write_pause(tmp: Path) -> None:
    """Test hook: with WRITE_SLEEP_ENV set, sleep mid-write beside a WRITING marker."""
    sleep = float(os.environ.get(WRITE_SLEEP_ENV, "0") or 0)
    if sleep > 0:
        (tmp / "WRITING").touch()  # lets the test see that the write is in progress
        time.sleep(sleep)
        (tmp / "WRITING").unlink()


def save_checkpoint(
    directory: str | Path,
    step: int,
    *,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write a checkpoint for ``step`` atomically, then delete all but the newest ``keep``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / checkpoint_name(step)
    if final.exists():  # saved at this very step already (e.g. a signal right after a save)
        return final
    remove_partial(directory)
    tmp = directory / f"{TMP_PREFIX}{checkpoint_name(step)}-{os.getpid()}"
    tmp.mkdir()
    opt_tensors, opt_meta = flatten_optimizer_state(optimizer)
    save_tensors(tmp / "model.safetensors", model)
    test_write_pause(tmp)
    save_tensors(tmp / "ema.safetensors", ema)
    save_tensors(tmp / "optimizer.safetensors", opt_tensors)
    state_path = tmp / "state.json"
    state_path.write_text(json.dumps({**state, "step": step, "optimizer": opt_meta}, indent=1))
    fsync_file(state_path)
    publish(tmp, final, keep)
    return final


# -- reading ----------------------------------------------------------------------------


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        opt_meta = state.pop("optimizer")
        return Checkpoint(
            path=path,
            step=int(state["step"]),
            model=load_file(str(path / "model.safetensors")),
            ema=load_file(str(path / "ema.safetensors")),
            optimizer=unflatten_optimizer_state(load_file(str(path / "optimizer.safetensors")), opt_meta),
            state=state,
        )
    except (OSError, KeyError, ValueError, TypeError, AttributeError, SafetensorError) as err:
        raise PixcadeError(f"cannot read checkpoint {path}: {str(err)[:200] or type(err).__name__}") from None


def intact_checkpoints(directory: str | Path, but: str | Path | None = None,
                       check: Callable[[Path], Any] = load_checkpoint) -> list[Path]:
    """The checkpoints under ``directory`` (except ``but``) that read back whole, newest
    first: where a run whose newest checkpoint is damaged can resume from instead.
    ``check`` reads one, raising PixcadeError if it cannot (default: this module's format)."""
    found = []
    for path in reversed(list_checkpoints(directory)):
        if but is not None and Path(path) == Path(but):
            continue
        try:
            check(path)
        except PixcadeError:
            continue
        found.append(path)
    return found
