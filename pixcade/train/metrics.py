"""Where training progress goes: a JSONL log, TensorBoard (if installed), a tqdm bar."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pixcade.io import atomic_write_text


def _forget_after(path: Path, step: int) -> None:
    """Drop the rows of ``path`` logged after ``step`` (and a line torn by a kill): a run
    resumed from the checkpoint of ``step`` logs those steps again, so they would appear
    twice. Unchanged files are not rewritten."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("step"), int) or row["step"] <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        atomic_write_text(path, "".join(kept))


class MetricsLog:
    """Appends one JSON object per line to ``RUN_DIR/metrics.jsonl`` and mirrors scalars to
    TensorBoard when `tensorboard` is importable (it is optional: noted once otherwise)."""

    def __init__(self, run_dir: Path, *, start_step: int, total_steps: int, enabled: bool = True):
        self.enabled = enabled
        self._file = None
        self._tb = None
        self._bar = None
        if not enabled:
            return
        path = run_dir / "metrics.jsonl"
        _forget_after(path, start_step)
        self._file = path.open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step)
        except ImportError:
            print("pixcade train: note: `tensorboard` is not installed; metrics go to "
                  "metrics.jsonl only", file=sys.stderr)
        self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                         disable=None)  # None: off when stderr is not a terminal

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):  # None: skipped
                    self._tb.add_scalar(f"train/{k}", v, step)

    def progress(self, step: int, loss: float | None, images_per_s: float) -> None:
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            shown = "skipped" if loss is None else f"{loss:.4f}"
            self._bar.set_postfix(loss=shown, img_s=f"{images_per_s:.1f}", refresh=False)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def add_image(self, tag: str, image_chw, step: int) -> None:
        if self._tb is not None:
            self._tb.add_image(tag, image_chw, step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()
