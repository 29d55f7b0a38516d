"""Which model a result came from: a digest of a saved cascade's files.

Results record it so that a model card can check its numbers were measured on the very
weights it describes, wherever the directory was copied to since; and, for a result measured
on the candidate a shipped model was assembled from, whether the stages it ran hold the
shipped model's networks (`same_networks`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from pixcade.errors import PixcadeError
from pixcade.pipeline.saving import load_cascade_config


def model_digest(directory: str | Path) -> str | None:
    """sha256 over cascade.json and each stage's weights, in cascade order (None: no cascade there)."""
    directory = Path(directory)
    config_path = directory / "cascade.json"
    if not config_path.is_file():
        return None
    h = hashlib.sha256()
    config = config_path.read_bytes()
    h.update(config)
    try:
        names = [s["name"] for s in json.loads(config)["stages"]]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise PixcadeError(f"{config_path}: cannot list the stages ({err})") from None
    for name in names:
        with open(directory / f"{name}.safetensors", "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def same_networks(source: str | Path, model: str | Path, names: Sequence[str]) -> bool:
    """Whether each named stage of the cascade ``source`` holds ``model``'s network for that
    stage: the same text encoder and stage config apart from its sampling defaults (U-Net,
    resolutions, noise schedule, parameterisation), and every tensor equal once cast to the
    dtype ``model`` stores it in, so an fp16-stored copy of fp32 weights (`pixcade assemble
    --storage fp16`) matches and any retrained or perturbed tensor does not."""
    source, model = Path(source), Path(model)
    theirs, ours = load_cascade_config(source), load_cascade_config(model)
    if (theirs.text_encoder, theirs.max_length) != (ours.text_encoder, ours.max_length):
        return False
    their_stages, our_stages = {s.name: s for s in theirs.stages}, {s.name: s for s in ours.stages}
    for name in names:
        if name not in their_stages or name not in our_stages:
            return False
        if dataclasses.replace(their_stages[name], sampling=our_stages[name].sampling) != our_stages[name]:
            return False
        a, b = load_file(source / f"{name}.safetensors"), load_file(model / f"{name}.safetensors")
        if a.keys() != b.keys() or any(not torch.equal(a[k].to(b[k].dtype), b[k]) for k in b):
            return False
    return True
