"""Where a cascade's networks run: checking a device name, and offloading (weights wait on
the CPU, each network visits the accelerator only while it works)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from pixcade.errors import PixcadeError


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, if this torch can use it (cuda, mps), else a one-line error."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise PixcadeError(f"unknown device {device!r} (use cpu, cuda or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PixcadeError("device 'cuda' asked for, but CUDA is not available")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise PixcadeError("device 'mps' asked for, but this torch has no usable MPS (Apple GPU) backend")
    return device


@contextlib.contextmanager
def placed(module: torch.nn.Module, run_device: torch.device | None) -> Iterator[None]:
    """``module`` on ``run_device`` for the duration, then back on the CPU (None: left where
    it is, for a cascade that is not offloading)."""
    if run_device is None:
        yield
        return
    module.to(run_device)
    try:
        yield
    finally:
        module.to("cpu")
