"""Exponential moving average of a network's weights: what sampling uses."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Float32 shadow copy of ``model``'s state, updated after each optimizer step.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates so a
    short run's average is not dominated by the random initialisation (with 0.9999 the
    initial weights would keep ~37% of the weight for 10k steps).
    Buffers (e.g. norm statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            k: v.detach().to(torch.float32 if v.is_floating_point() else v.dtype).clone()
            for k, v in model.state_dict().items()
        }
        self._param_names = {name for name, _ in model.named_parameters()}

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if k in self._param_names and s.is_floating_point():
                s.lerp_(v.detach().to(s.dtype), 1.0 - d)
            else:
                s.copy_(v.detach())
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}")
        for k, s in self.shadow.items():
            s.copy_(state[k])
        self.num_updates = int(num_updates)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (cast to its dtypes)."""
        model.load_state_dict({k: v for k, v in self.shadow.items()}, strict=True)
