"""A grid of sampling settings for the shapes benchmark: guidance weight x thresholding.

Imagen's point: large guidance weights align images with the text better, but push the
predicted x0 outside [-1, 1], which static clipping handles badly and dynamic
thresholding well. This module turns ``--guidance 1,3,5,8 --threshold dynamic,static``
into per-stage options for `Cascade.generate` and tabulates the accuracies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from pixcade.diffusion.settings import SamplingSettings
from pixcade.errors import PixcadeError


def _parse_axis(text: str, flag: str, field: str) -> list[Any]:
    """A comma-separated list of one sampling setting, each read and checked as
    `SamplingSettings` reads it; distinct."""
    values = []
    for part in text.split(","):
        try:
            values.append(getattr(SamplingSettings().replace_text({field: part}), field))
        except PixcadeError as err:
            raise PixcadeError(f"{flag}: {err}") from None
    if len(set(values)) != len(values):
        raise PixcadeError(f"{flag}: a value repeats in {text!r}")
    return values


def parse_weights(text: str) -> list[float]:
    """``"1,3,5,8"`` -> ``[1.0, 3.0, 5.0, 8.0]``: distinct valid guidance weights."""
    return _parse_axis(text, "--guidance", "guidance_weight")


def parse_thresholds(text: str) -> list[str]:
    """``"dynamic,static"`` -> ``["dynamic", "static"]``, each a valid threshold spec."""
    return _parse_axis(text, "--threshold", "threshold")


@dataclass(frozen=True)
class Setting:
    """One cell of the grid; None keeps the stage's saved default."""

    guidance_weight: float | None
    threshold: str | None

    def options(self, stage: str) -> dict[str, dict[str, Any]]:
        """Keyword options for `Cascade.generate`, applied to ``stage`` only."""
        out: dict[str, dict[str, Any]] = {}
        if self.guidance_weight is not None:
            out["guidance_weight"] = {stage: self.guidance_weight}
        if self.threshold is not None:
            out["threshold"] = {stage: self.threshold}
        return out

    @property
    def label(self) -> str:
        """A directory name for this cell's images and report."""
        g = "default" if self.guidance_weight is None else f"{self.guidance_weight:g}"
        t = "default" if self.threshold is None else self.threshold.replace(":", "-")
        return f"guidance-{g}_threshold-{t}"


def grid(weights: Sequence[float] | None, thresholds: Sequence[str] | None) -> list[Setting]:
    """Every (weight, threshold) pair, weight-major; an axis not swept is the default."""
    return [Setting(w, t) for w in (weights or [None]) for t in (thresholds or [None])]


def _acc(t: dict[str, Any]) -> str:
    return "-" if t["accuracy"] is None else f"{t['accuracy']:.3f}"


def markdown_table(rows: Sequence[dict[str, Any]], stage: str) -> str:
    """Rows: guidance weights; columns: overall and held-out accuracy per threshold."""
    thresholds = list(dict.fromkeys(r["threshold"] for r in rows))
    weights = list(dict.fromkeys(r["guidance_weight"] for r in rows))
    cell = {(r["guidance_weight"], r["threshold"]): r for r in rows}
    head = [f"guidance ({stage})"]
    for t in thresholds:
        head += [f"{t}: overall", f"{t}: held-out"]
    lines = ["| " + " | ".join(head) + " |", "| ---: |" + " ---: |" * (2 * len(thresholds))]
    for w in weights:
        parts = [f"{w:g}"]
        for t in thresholds:
            r = cell.get((w, t))
            parts += [_acc(r["overall"]), _acc(r["held_out"])] if r else ["-", "-"]
        lines.append("| " + " | ".join(parts) + " |")
    return "\n".join(lines)
