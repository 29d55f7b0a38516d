"""Random weights for test networks."""

from __future__ import annotations

import torch


def perturb(net: torch.nn.Module, generator: torch.Generator | None = None) -> torch.nn.Module:
    """Adds N(0, 0.05²) noise to every parameter, the zero-initialised layers (output convs,
    guidance projections) too, so a network's output depends on every input. Draws from
    ``generator``, else from torch's global generator (seed it first). Returns ``net``."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype, device=p.device) * 0.05)
    return net
