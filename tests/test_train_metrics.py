"""Where training metrics go: one JSON object per line, and the same scalars (and preview
images) to TensorBoard when it is installed; without it, a note and the JSONL alone."""

from __future__ import annotations

import json
import sys
import types

import numpy as np

from pixcade.train.metrics import MetricsLog


class FakeWriter:
    """Records what a torch.utils.tensorboard.SummaryWriter is asked to do."""

    made: list["FakeWriter"] = []

    def __init__(self, log_dir, purge_step=None):
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars: list[tuple[str, float, int]] = []
        self.images: list[tuple[str, tuple, int]] = []
        self.closed = False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_image(self, tag, image, step):
        self.images.append((tag, tuple(image.shape), step))

    def close(self):
        self.closed = True


def test_scalars_go_to_jsonl_and_tensorboard(tmp_path, monkeypatch):
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    FakeWriter.made.clear()
    log = MetricsLog(tmp_path, start_step=10, total_steps=20)
    log.log(11, {"loss": 0.5, "lr": 1e-4, "grad_norm": None, "epoch": 0})
    log.log(12, {"loss": None, "lr": 2e-4, "grad_norm": 3.0, "epoch": 1})  # a skipped step
    log.add_image("samples", np.zeros((3, 4, 4), dtype=np.uint8), 12)
    log.close()
    (writer,) = FakeWriter.made
    # A resumed run starts at its checkpoint's step: TensorBoard drops the events after it.
    assert writer.log_dir == str(tmp_path / "tensorboard") and writer.purge_step == 10
    assert writer.scalars == [("train/loss", 0.5, 11), ("train/lr", 1e-4, 11), ("train/epoch", 0, 11),
                              ("train/lr", 2e-4, 12), ("train/grad_norm", 3.0, 12), ("train/epoch", 1, 12)]
    assert writer.images == [("samples", (3, 4, 4), 12)] and writer.closed
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in rows] == [(11, 0.5, None), (12, None, 3.0)]


def test_without_tensorboard_a_note_and_the_jsonl(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    log = MetricsLog(tmp_path, start_step=0, total_steps=5)
    log.log(1, {"loss": 1.0})
    log.add_image("samples", np.zeros((3, 2, 2)), 1)  # nothing to write it to: no error
    log.close()
    assert "`tensorboard` is not installed" in capsys.readouterr().err
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 1.0


def test_other_ranks_write_nothing(tmp_path):
    log = MetricsLog(tmp_path, start_step=0, total_steps=5, enabled=False)
    log.log(1, {"loss": 1.0})
    log.message("hello")
    log.close()
    assert list(tmp_path.iterdir()) == []
