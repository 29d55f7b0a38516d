"""The precision a network is run in for sampling (``--dtype``).

A network run in half precision computes under autocast; its inputs and outputs, and the
sampler, guidance and thresholding around it, stay in float32 (the U-Net returns x's
dtype), so only the network's arithmetic is rounded.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from pixcade.diffusion.settings import DTYPE_NAMES
from pixcade.errors import PixcadeError

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.bfloat16, torch.float16)))


def check_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The torch dtype called ``name`` if ``device`` can sample in it, else a one-line error."""
    if name not in DTYPES:
        raise PixcadeError(f"unknown dtype {name!r} (choose from {', '.join(DTYPES)})")
    kind = torch.device(device).type
    if name == "fp16" and kind == "cpu":
        raise PixcadeError("fp16 sampling needs an accelerator (cuda or mps); on the CPU use bf16")
    return DTYPES[name]


def autocast_net(net: Callable[..., torch.Tensor], dtype: torch.dtype, device: torch.device) -> Callable[..., torch.Tensor]:
    """``net`` run under autocast to ``dtype`` on ``device`` (itself for float32)."""
    if dtype == torch.float32:
        return net

    def run(*args: Any, **kwargs: Any) -> torch.Tensor:
        # No cast cache: it keeps a half-precision copy of every weight until the call ends,
        # though a U-Net call uses each weight once (the 2B base: 3.7 GiB held for nothing).
        with torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=False):
            return net(*args, **kwargs)

    return run
