"""Stage exports: the EMA weights of a run in the form `Cascade.from_stage_dirs` loads.

The trainer writes ``RUN_DIR/final/`` when a run finishes; `export_checkpoint` writes the
same thing from any of its checkpoints, so a model can be evaluated while it still trains.
An export is a directory holding ``stage.json`` = ``{"stage": StageConfig, "text_encoder",
"max_length", "step"}`` (plus ``"grown_from"``, the source export, when `grow_export` wrote it)
and ``ema.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from pixcade.errors import PixcadeError
from pixcade.io import pid_alive, remove_stale_temps, save_tensors, temp_name
from pixcade.nn.grow import grow_state
from pixcade.nn.unet import EfficientUNet
from pixcade.pipeline.saving import load_weights, read_stage_export
from pixcade.train import checkpoint as ckpt
from pixcade.train import sharded_checkpoint as sharded


def write_stage_export(
    out: str | Path,
    stage: Mapping[str, Any],
    text_encoder: str,
    max_length: int,
    ema: Mapping[str, torch.Tensor],
    step: int,
    grown_from: str | None = None,
) -> Path:
    """Write ``out/stage.json`` + ``out/ema.safetensors``, replacing ``out`` as a whole.

    Written beside ``out`` first and renamed into place, so a reader (or a crash) never
    sees a directory with new weights and an old config. The previous ``out`` is moved
    aside (``.NAME.PID.old``) for the moment between the two renames; an export killed
    there leaves it, and the next export puts it back (or, when a whole newer ``out``
    exists, removes it).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent)  # the temporary folder of an export killed midway
    _recover_previous(out)
    tmp = temp_name(out)
    tmp.mkdir()
    meta = {"stage": dict(stage), "text_encoder": text_encoder, "max_length": max_length, "step": step}
    if grown_from is not None:
        meta["grown_from"] = grown_from
    (tmp / "stage.json").write_text(json.dumps(meta, indent=1))
    save_tensors(tmp / "ema.safetensors", ema)
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    if out.exists():
        os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def _recover_previous(out: Path) -> None:
    for old in out.parent.glob(f".{out.name}.*.old"):
        pid = old.name[len(out.name) + 2: -len(".old")]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue  # not ours, or an export still running
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, out)


def _run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    try:
        config = json.loads(path.read_text())["config"]
        return {"text_encoder": str(config["text_encoder"]), "max_length": int(config["max_length"])}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise PixcadeError(f"{path}: cannot read the run's config ({err})") from None


def find_checkpoint(run_dir: str | Path, checkpoint: str | None = None) -> Path:
    """The run's checkpoint ``step-N`` (or ``N``), or by default its newest."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    have = ckpt.list_checkpoints(ckpt_dir)
    if checkpoint is None:
        if not have:
            raise PixcadeError(f"{run_dir}: no checkpoint in {ckpt_dir}")
        return have[-1]
    m = re.fullmatch(r"(?:step-)?(\d+)", checkpoint)
    path = ckpt_dir / ckpt.checkpoint_name(int(m.group(1))) if m else None
    if path not in have:
        names = ", ".join(p.name for p in have) or "none"
        raise PixcadeError(f"{run_dir}: no checkpoint {checkpoint!r} (have: {names})")
    return path


def export_checkpoint(run_dir: str | Path, checkpoint: str | None = None, out: str | Path | None = None) -> Path:
    """Export a checkpoint's EMA weights (default: the newest) as a stage export; a sharded
    checkpoint's shards are gathered into whole tensors (one process, no process group).

    ``out`` defaults to ``RUN_DIR/exports/step-N``; ``final/`` stays the trainer's.
    A trainer still running may delete old checkpoints meanwhile: reading one that just
    vanished is a PixcadeError naming it, never a half-read export.
    """
    run_dir = Path(run_dir)
    encoder = _run_config(run_dir)
    path = find_checkpoint(run_dir, checkpoint)
    if sharded.is_sharded_checkpoint(path):  # an fsdp run's: every rank's EMA shards, gathered
        state, ema = sharded.read_state(path), sharded.read_full(path, "ema")
    else:
        c = ckpt.load_checkpoint(path)
        state, ema = {**c.state, "step": c.step}, c.ema
    if "stage" not in state:
        raise PixcadeError(f"{path}: state.json does not record the stage config")
    out = Path(out) if out is not None else run_dir / "exports" / path.name
    return write_stage_export(out, state["stage"], encoder["text_encoder"], encoder["max_length"], ema,
                              int(state["step"]))


def grow_export(source: str | Path, out: str | Path) -> Path:
    """Write ``source``'s base stage grown by one full-resolution level (`pixcade.nn.grow`) as
    a stage export at twice the resolution, to start a higher-resolution run from with
    ``train.init_from``. Its stage config keeps the source's schedule and sampling settings;
    the run's config decides what it trains with (its U-Net must be the grown one)."""
    export = read_stage_export(source)
    stage = export.config
    if stage.is_super_resolution:
        raise PixcadeError(f"{source}: stage {stage.name!r} is a super-resolution stage; only a base stage grows "
                           "(an SR stage's input would change meaning)")
    net = EfficientUNet(stage.unet)
    load_weights(net, export.weights, stage.name)
    unet, state = grow_state(net)
    grown = dataclasses.replace(stage, resolution=2 * stage.resolution, unet=unet)  # re-validates
    return write_stage_export(out, grown.to_dict(), export.text_encoder, export.max_length, state, export.step or 0,
                              grown_from=str(source))
