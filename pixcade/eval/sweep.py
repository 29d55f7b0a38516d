"""Grids of sampling settings: the axes a sweep varies, their cells, and each cell's settings.

One grammar for every sweep (`pixcade eval emoji sweep --vary`, `pixcade eval shapes
--guidance/--threshold`): an axis is a `[STAGE.]KEY` of `SamplingSettings` with a list of
values as command-line text; a cell is one value per axis, i.e. a tuple of ``--set``
assignments, read and checked by `pipeline.options.settings_from_text` like any other
``--set``. A cell's folder name and column title come from its assignments, so the same
cell has the same folder in every sweep that contains it (a sweep resumes by folder).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Sequence

from pixcade.diffusion.settings import SamplingSettings
from pixcade.errors import PixcadeError
from pixcade.pipeline.options import parse_assignment, settings_from_text
from pixcade.stage import StageConfig

Assignment = tuple[str | None, str, str]  # (stage or None for all, KEY, VALUE), as `--set` reads them
Cell = tuple[Assignment, ...]


@dataclass(frozen=True)
class Axis:
    """One swept setting: ``[STAGE.]KEY`` and its values, as command-line text."""

    stage: str | None
    key: str
    values: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.stage}.{self.key}" if self.stage else self.key


def axis(stage: str | None, key: str, raw: str, flag: str) -> Axis:
    """An `Axis` of ``key`` from comma-separated ``raw`` (values distinct and non-empty);
    errors name the flag that gave it."""
    values = tuple(v.strip() for v in raw.split(","))
    if any(not v for v in values):
        raise PixcadeError(f"{flag}: empty value in {raw!r}")
    if len(set(values)) != len(values):
        raise PixcadeError(f"{flag}: a value repeats in {raw!r}")
    return Axis(stage, key, values)


def parse_axis(text: str, stage_names: Sequence[str]) -> Axis:
    """``"base.guidance_weight=1,3,5,8"`` (a ``--vary``) -> an `Axis`."""
    stage, key, raw = parse_assignment(text, stage_names)
    return axis(stage, key, raw, f"--vary {text}")


def cells(axes: Sequence[Axis]) -> list[Cell]:
    """Every combination of the axes' values, the first axis slowest; one cell, no
    assignments, when there is no axis."""
    names = [a.name for a in axes]
    if len(set(names)) != len(names):
        raise PixcadeError(f"a setting is swept twice ({', '.join(names)})")
    grid = [tuple((a.stage, a.key, v) for a, v in zip(axes, combo)) for combo in
            itertools.product(*(a.values for a in axes))]
    labels = [cell_label(c) for c in grid]
    if len(set(labels)) != len(labels):  # each cell is a folder, and is reported under its name
        raise PixcadeError(f"two cells would share the folder {next(x for x in labels if labels.count(x) > 1)}")
    return grid


def cell_label(cell: Sequence[Assignment]) -> str:
    """A folder name for a cell: ``base.guidance_weight-5_base.threshold-static``."""
    parts = [f"{stage + '.' if stage else ''}{key}-{value}" for stage, key, value in cell]
    return re.sub(r"[^A-Za-z0-9._-]", "-", "_".join(parts)) or "defaults"


def cell_title(cell: Sequence[Assignment]) -> str:
    """A column header that wraps at its spaces: ``guidance_weight 5, threshold static``."""
    return ", ".join(f"{key} {value}" for _, key, value in cell) or "defaults"


def cell_settings(configs: Sequence[StageConfig], cell: Sequence[Assignment],
                  fixed: Sequence[Assignment] = ()) -> dict[str, SamplingSettings]:
    """Each stage's settings in ``cell`` (over the ``fixed`` assignments of every cell), checked;
    errors name the cell."""
    try:
        return settings_from_text(configs, [*fixed, *cell])
    except PixcadeError as err:
        raise PixcadeError(f"cell {cell_label(cell)}: {err}") from None
