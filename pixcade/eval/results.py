"""Reading an evaluation's result file back: the one number it reports and, for the shapes
benchmark, which prompts passed (for paired comparisons, `pixcade.eval.paired`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pixcade.errors import PixcadeError


@dataclass(frozen=True)
class Headline:
    metric: str  # "shapes accuracy" or "SR PSNR (dB)"
    value: float
    n: int  # prompts (or scenes) it is measured on
    passed: tuple[bool, ...] | None = None  # the shapes benchmark's per-image pass/fail, in order
    held_out: float | None = None  # the shapes benchmark's accuracy on held-out pairs


def read_headline(path: str | Path) -> Headline:
    """A `pixcade eval shapes` report (shapes.json: overall accuracy) or a `pixcade eval
    sr-psnr` report (sr_psnr.json: the SR stage's mean PSNR); a one-line error otherwise."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise PixcadeError(f"result file {path}: {err}") from None
    if not isinstance(report, dict):
        raise PixcadeError(f"result file {path}: not a JSON object")
    overall = report.get("overall")
    if isinstance(overall, dict) and "accuracy" in overall:
        passed = tuple(bool(r["passed"]) for r in report.get("results", []))
        held = report.get("held_out") or {}
        return Headline("shapes accuracy", float(overall["accuracy"]), int(overall["n"]),
                        passed if len(passed) == overall["n"] else None,
                        float(held["accuracy"]) if held.get("n") else None)
    if isinstance(report.get("psnr_sr"), (int, float)) and "resolution" in report:
        return Headline("SR PSNR (dB)", float(report["psnr_sr"]), int(report["n"]))
    raise PixcadeError(f"result file {path}: neither a shapes benchmark report (overall.accuracy) "
                       "nor an sr-psnr report (psnr_sr)")
