"""A run's plan: which of a cascade's stages run, with what settings, and their progress bars."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from pixcade.diffusion.settings import SamplingSettings
from pixcade.errors import PixcadeError
from pixcade.stage import Stage


@dataclass
class Plan:
    """The stages one call runs (consecutive, in cascade order) and each one's settings."""

    stages: list[Stage]
    settings: dict[str, SamplingSettings]

    @property
    def names(self) -> list[str]:
        return [s.config.name for s in self.stages]

    @property
    def needs_start(self) -> bool:
        return self.stages[0].config.is_super_resolution

    def check_editable(self) -> None:
        """An image is edited from the base stage on (SDEdit starts a base-stage run)."""
        if self.needs_start:
            raise PixcadeError(f"editing an image starts at the base stage, but this run starts at {self.names[0]!r}")


class StageBars:
    """One tqdm bar per stage, advanced by the sampler's per-step callback."""

    def __init__(self, plan: Plan, num_batches: int, enabled: bool = True):
        self.bars = {
            name: tqdm(total=plan.settings[name].steps * num_batches, desc=name, unit="step",
                       position=k, leave=True, disable=not enabled, dynamic_ncols=True)
            for k, name in enumerate(plan.names)
        }

    def callback(self, stage: str) -> Callable[[int, int, torch.Tensor], None]:
        bar = self.bars[stage]
        return lambda step, total, x0: bar.update(1)

    def __enter__(self) -> "StageBars":
        return self

    def __exit__(self, *exc: Any) -> None:
        for bar in self.bars.values():
            bar.close()


def stage_index(stages: Sequence[Stage], name: str) -> int:
    """Where the stage called ``name`` is in ``stages`` (an unknown name: an error naming them)."""
    names = [s.config.name for s in stages]
    if name not in names:
        raise PixcadeError(f"unknown stage {name!r} (stages: {', '.join(names)})")
    return names.index(name)


def choose(
    stages: Sequence[Stage],
    selected: Sequence[str] | None = None,
    stop_after: str | None = None,
    start_resolution: int | None = None,
) -> list[Stage]:
    """The stages of a cascade's ``stages`` to run, checked. ``selected`` names consecutive
    stages; by default all of them, or, given the side of a start image, from the SR stage
    that takes images of that size. ``stop_after`` cuts the run after the named stage.
    """
    names = [s.config.name for s in stages]
    if selected is not None:
        selected = list(selected)
        if not selected:
            raise PixcadeError("no stages selected")
        idx = [stage_index(stages, name) for name in selected]
        if idx != list(range(idx[0], idx[0] + len(idx))):
            raise PixcadeError(
                f"stages must be consecutive and in cascade order ({', '.join(names)}), "
                f"got {', '.join(selected)}"
            )
    else:
        start = 0
        if start_resolution is not None:
            takes = [k for k, s in enumerate(stages) if s.config.lowres_resolution == start_resolution]
            if not takes:
                sizes = ", ".join(
                    f"{s.config.name} takes {s.config.lowres_resolution}px"
                    for s in stages if s.config.is_super_resolution
                ) or "no stage takes an image"
                raise PixcadeError(
                    f"no stage takes a {start_resolution}px start image ({sizes}); "
                    "choose the stages to run and it will be resized"
                )
            start = takes[0]
        idx = list(range(start, len(names)))
    if stop_after is not None:
        k = stage_index(stages, stop_after)
        if k < idx[0]:
            raise PixcadeError(f"stop after {stop_after!r}: that stage comes before {names[idx[0]]!r}")
        idx = [j for j in idx if j <= k]
    chosen = [stages[j] for j in idx]
    first = chosen[0].config
    if first.is_super_resolution and start_resolution is None:
        raise PixcadeError(
            f"stage {first.name!r} is a super-resolution stage: it needs a start image "
            f"({first.lowres_resolution}px)"
        )
    if not first.is_super_resolution and start_resolution is not None:
        raise PixcadeError(f"a start image was given but the first stage run, {first.name!r}, takes none")
    return chosen
