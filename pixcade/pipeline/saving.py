"""The on-disk format of a cascade, and reading the trainer's per-stage exports.

A saved cascade is a directory holding ``cascade.json``::

    {"format": 1, "text_encoder": NAME_OR_PATH, "max_length": INT,
     "stages": [StageConfig.to_dict(), ...]}          # in cascade order, base first

and one ``<stage name>.safetensors`` per stage (the U-Net's state dict). The trainer exports
each stage as ``RUN_DIR/final/stage.json`` = ``{"stage": ..., "text_encoder": ...,
"max_length": ...}`` beside ``RUN_DIR/final/ema.safetensors``.

Every failure to read either is a PixcadeError naming the file (and stage).
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

from pixcade.errors import PixcadeError
from pixcade.io import atomic_write, atomic_write_text
from pixcade.stage import StageConfig

FORMAT_VERSION = 1
CONFIG_NAME = "cascade.json"
EXPORT_CONFIG = "stage.json"
EXPORT_WEIGHTS = "ema.safetensors"
# Stage names become file names, so keep them to a portable alphabet.
_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class CascadeConfig:
    text_encoder: str
    max_length: int
    stages: list[StageConfig]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "text_encoder": self.text_encoder,
            "max_length": self.max_length,
            "stages": [s.to_dict() for s in self.stages],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = CONFIG_NAME) -> "CascadeConfig":
        if not isinstance(d, dict):
            raise PixcadeError(f"{source}: expected a JSON object")
        if d.get("format") != FORMAT_VERSION:
            raise PixcadeError(
                f"{source}: unsupported format {d.get('format')!r} (this pixcade reads {FORMAT_VERSION})"
            )
        unknown = set(d) - {"format", "text_encoder", "max_length", "stages"}
        if unknown:
            raise PixcadeError(f"{source}: unknown keys {sorted(unknown)}")
        text_encoder, max_length = _encoder_fields(d, source)
        stages_raw = d.get("stages")
        if not isinstance(stages_raw, list) or not stages_raw:
            raise PixcadeError(f"{source}: 'stages' must be a non-empty list")
        stages = [_stage_config(s, f"{source} stage {i}") for i, s in enumerate(stages_raw)]
        config = cls(text_encoder, max_length, stages)
        validate_chain(config.stages, source)
        return config


def _encoder_fields(d: dict[str, Any], source: str) -> tuple[str, int]:
    text_encoder, max_length = d.get("text_encoder"), d.get("max_length")
    if not isinstance(text_encoder, str) or not text_encoder:
        raise PixcadeError(f"{source}: 'text_encoder' must be a non-empty string")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise PixcadeError(f"{source}: 'max_length' must be a positive integer")
    return text_encoder, max_length


def _stage_config(d: Any, source: str) -> StageConfig:
    if not isinstance(d, dict):
        raise PixcadeError(f"{source}: a stage config must be a JSON object")
    try:
        return StageConfig.from_dict(d)
    except PixcadeError as err:
        raise PixcadeError(f"{source}: {err}") from None
    except (TypeError, ValueError, KeyError) as err:
        raise PixcadeError(f"{source}: bad stage config ({err})") from None


def validate_chain(stages: Sequence[StageConfig], source: str = "cascade") -> None:
    """A cascade is one base stage followed by SR stages, each taking the previous output."""
    names = [s.name for s in stages]
    for name in names:
        if not _STAGE_NAME.match(name):
            raise PixcadeError(f"{source}: stage name {name!r} is not a valid file name")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PixcadeError(f"{source}: stage names repeat: {', '.join(dupes)}")
    if stages[0].is_super_resolution:
        raise PixcadeError(f"{source}: the first stage {names[0]!r} must be a base stage, not SR")
    for prev, cur in zip(stages, stages[1:]):
        if not cur.is_super_resolution:
            raise PixcadeError(f"{source}: stage {cur.name!r} follows {prev.name!r} but is not SR")
        if cur.lowres_resolution != prev.resolution:
            raise PixcadeError(
                f"{source}: stage {cur.name!r} takes {cur.lowres_resolution}px images but "
                f"{prev.name!r} makes {prev.resolution}px"
            )


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise PixcadeError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PixcadeError(f"{path}: not valid JSON ({err})") from None


def load_cascade_config(directory: str | os.PathLike) -> CascadeConfig:
    directory = Path(directory)
    if not directory.is_dir():
        what = "is a file, not a model directory" if directory.exists() else "does not exist"
        raise PixcadeError(f"model directory {directory} {what}")
    path = directory / CONFIG_NAME
    return CascadeConfig.from_dict(read_json(path), str(path))


# Storage precisions a saved cascade's weight files may use. Loading casts every tensor to
# the network's own dtype (fp32), so a half-precision file only rounds the weights once:
# ship one only where sampling was measured equal.
STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def storage_dtype(storage: str) -> torch.dtype:
    if storage not in STORAGE_DTYPES:
        raise PixcadeError(f"unknown weight storage {storage!r} (choose from {', '.join(STORAGE_DTYPES)})")
    return STORAGE_DTYPES[storage]


def save_weights(net: torch.nn.Module, path: Path, storage: str = "fp32") -> None:
    dtype = storage_dtype(storage)
    if dtype != torch.float32:
        # A cast copy, so the caller's network keeps its precision; tied tensors stay tied.
        net = copy.deepcopy(net).to(dtype)
    atomic_write(path, lambda tmp: save_model(net, tmp))  # save_model drops the duplicate names of tied tensors


def save_cascade(directory: str | os.PathLike, config: CascadeConfig, nets: Sequence[torch.nn.Module],
                 storage: str = "fp32") -> None:
    """Weights first and the config last: a save cut short leaves no loadable-looking dir.
    ``storage``: the weight files' precision (`STORAGE_DTYPES`)."""
    validate_chain(config.stages)
    storage_dtype(storage)  # named before anything is written
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stage, net in zip(config.stages, nets, strict=True):
        save_weights(net, directory / f"{stage.name}.safetensors", storage)
    text = json.dumps(config.to_dict(), indent=2) + "\n"
    atomic_write_text(directory / CONFIG_NAME, text)


def load_weights(net: torch.nn.Module, path: Path, stage: str, *, allow_missing: bool = False) -> list[str]:
    """Load a U-Net state dict, naming the stage and file on any mismatch or corruption.

    With ``allow_missing`` (starting a grown U-Net from smaller weights), tensors the file
    lacks keep their initialisation; their names are returned.
    """
    if not path.is_file():
        raise PixcadeError(f"stage {stage!r}: weights file {path} not found")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise PixcadeError(f"stage {stage!r}: {path} is not a readable safetensors file ({err})") from None
    own = net.state_dict()
    # A tied tensor is stored once under one of its names; any name of its group will do.
    groups: dict[tuple[int, int], set[str]] = {}
    for key, value in own.items():
        groups.setdefault((value.untyped_storage().data_ptr(), value.storage_offset()), set()).add(key)
    missing = [
        k for k, v in own.items()
        if k not in tensors
        and not groups[(v.untyped_storage().data_ptr(), v.storage_offset())] & tensors.keys()
    ]
    unexpected = [k for k in tensors if k not in own]
    wrong = [k for k in tensors if k in own and tuple(tensors[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing and not allow_missing:
        problems.append(f"{len(missing)} missing tensor(s) (e.g. {missing[0]!r})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) (e.g. {unexpected[0]!r})")
    if wrong:
        k = wrong[0]
        problems.append(
            f"{len(wrong)} shape mismatch(es) (e.g. {k!r}: file {list(tensors[k].shape)} "
            f"vs model {list(own[k].shape)})"
        )
    if problems:
        raise PixcadeError(f"stage {stage!r}: {path} does not fit the stage's U-Net: {'; '.join(problems)}")
    net.load_state_dict(tensors, strict=False)
    return missing


@dataclass
class StageExport:
    config: StageConfig
    text_encoder: str
    max_length: int
    weights: Path
    step: int | None = None  # the training step of the weights, when the export records it


def read_stage_export(run_dir: str | os.PathLike) -> StageExport:
    """Read a trainer export; ``run_dir`` may be the run directory or its ``final/``, or
    ``CASCADE_DIR:STAGE``, one stage of a saved cascade (e.g. a shipped model's, to assemble
    beside a new or distilled stage)."""
    cascade_dir, colon, stage = str(run_dir).rpartition(":")
    if colon and not Path(run_dir).exists() and (Path(cascade_dir) / CONFIG_NAME).is_file():
        config = load_cascade_config(cascade_dir)
        stages = {s.name: s for s in config.stages}
        if stage not in stages:
            raise PixcadeError(f"{cascade_dir}: no stage {stage!r} (stages: {', '.join(stages)})")
        weights = Path(cascade_dir) / f"{stage}.safetensors"
        return StageExport(stages[stage], config.text_encoder, config.max_length, weights)
    run_dir = Path(run_dir)
    folder = run_dir / "final" if (run_dir / "final" / EXPORT_CONFIG).is_file() else run_dir
    path = folder / EXPORT_CONFIG
    if not path.is_file():
        raise PixcadeError(f"{run_dir}: no trained stage export ({EXPORT_CONFIG} or final/{EXPORT_CONFIG}, "
                           "or CASCADE_DIR:STAGE)")
    d = read_json(path)
    if not isinstance(d, dict) or "stage" not in d:
        raise PixcadeError(f"{path}: expected an object with 'stage', 'text_encoder', 'max_length'")
    text_encoder, max_length = _encoder_fields(d, str(path))
    step = d.get("step")
    return StageExport(_stage_config(d["stage"], str(path)), text_encoder, max_length, folder / EXPORT_WEIGHTS,
                       step if isinstance(step, int) and not isinstance(step, bool) else None)
