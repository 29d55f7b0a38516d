"""Bad files and bad places are one line naming the path and the cause, never a traceback:
an output folder that is a file or lies below one, a full disk, a text input that is not
UTF-8, an image beyond Pillow's decompression-bomb limit."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pixcade.cli import main
from tiny_cascade import save_tiny_cascade

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_cascade(tmp_path_factory.mktemp("model"))


@pytest.fixture(autouse=True)
def no_shard(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pixcade {command}: error: ") and "\n" not in err, err
    return err


def test_output_folder_that_is_a_file_or_below_one(tmp_path, model, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = json.loads((REPO / "configs" / "tiny-shapes.json").read_text())
    (tmp_path / "c.json").write_text(json.dumps(config))
    for out in (blocker, blocker / "below"):
        for argv, command in [
            (["generate", "--model", str(model), "--device", "cpu", "--out", str(out), "x"], "generate"),
            (["data", "shapes", "--n", "2", "--res", "16", "--out", str(out)], "data shapes"),
            (["train", "--config", str(tmp_path / "c.json"), "--stage", "base", "--out", str(out)], "train"),
        ]:
            assert main(argv) != 0
            err = one_line(capsys, command)
            assert str(blocker) in err, err
    assert blocker.read_text() == "not a folder"


def _limit_file_size():
    # A "full disk": writes past 100 bytes fail with EFBIG (File too large), not SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))


@pytest.mark.parametrize("command", [
    ["generate", "--n", "2", "--device", "cpu", "x"],
    ["data", "shapes", "--n", "2", "--res", "32"],
])
def test_a_full_disk_is_one_line_naming_the_file(tmp_path, model, command):
    if command[0] == "generate":
        command = [*command, "--model", str(model)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pixcade.cli", *command, "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size)
    lines = [line for line in proc.stderr.splitlines() if "error" in line or "Traceback" in line]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert str(out) in lines[0] and "File too large" in lines[0], lines[0]
    assert not [p for p in out.rglob("*.tmp")]  # a failed write leaves no temporary file


def test_non_utf8_manifest_and_captions(tmp_path, capsys):
    (tmp_path / "data.jsonl").write_bytes(b'{"image": "a.png", "caption": "caf\xe9"}\n')
    (tmp_path / "captions.txt").write_bytes(b"caf\xe9\n")
    for argv, named in [
        (["embed", "--data", str(tmp_path / "data.jsonl"), "--out", str(tmp_path / "c")], "data.jsonl"),
        (["embed", "--captions", str(tmp_path / "captions.txt"), "--out", str(tmp_path / "c")], "captions.txt"),
    ]:
        assert main(argv) == 2
        err = one_line(capsys, "embed")
        assert named in err and "UTF-8" in err.replace("utf-8", "UTF-8"), err


def test_decompression_bomb_start_image(tmp_path, model, capsys, monkeypatch):
    # Pillow refuses images over twice MAX_IMAGE_PIXELS; lowered so a small file is a bomb.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("RGB", (64, 64)).save(tmp_path / "bomb.png")
    assert main(["generate", "--model", str(model), "--device", "cpu", "--out", str(tmp_path / "o"),
                 "--start-image", str(tmp_path / "bomb.png"), "x"]) == 2
    err = one_line(capsys, "generate")
    assert "bomb.png" in err and "decompression bomb" in err, err
