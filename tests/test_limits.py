"""Size-like inputs are bounded (before anything is allocated or written), the bounds can be
raised deliberately, and Ctrl-C stops a command within a couple of seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pixcade.cli import main
from pixcade.errors import PixcadeError
from pixcade.limits import LIMITS, check_limit, limit
from tiny_cascade import save_tiny_cascade

REPO = Path(__file__).resolve().parents[1]
HUGE = "1000000000"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_cascade(tmp_path_factory.mktemp("model"))


def probes(tmp_path: Path, model: Path) -> list[tuple[list[str], str]]:
    out = str(tmp_path / "out")
    train_config = tmp_path / "train.json"
    doc = json.loads((REPO / "configs" / "tiny-shapes.json").read_text())
    doc["stages"][0]["train"]["batch_size"] = int(HUGE)
    train_config.write_text(json.dumps(doc))
    gen = ["generate", "--model", str(model), "--device", "cpu", "--out", out]
    return [
        (gen + ["--n", HUGE, "a prompt"], "1000000000 image(s) per prompt x 1 prompt(s) is 1000000000"),
        (gen + ["--n", "60000", "a", "b"], "60000 image(s) per prompt x 2 prompt(s) is 120000"),
        (gen + ["--batch-size", HUGE, "a prompt"], "the batch size is 1000000000"),
        (gen + ["x" * 20_000], "length of prompt 1 is 20000"),
        # before any input file is read (this one does not exist)
        (gen + ["--n", HUGE, "--image", str(tmp_path / "missing.png"), "a prompt"], "per prompt x 1 prompt(s)"),
        (["data", "shapes", "--n", "4", "--res", "100000", "--out", out], "--res is 100000"),
        (["data", "shapes", "--n", HUGE, "--res", "32", "--out", out], "--n is 1000000000"),
        (["embed", "--captions", str(train_config), "--batch-size", HUGE, "--out", out], "--batch-size is"),
        (["eval", "sr-psnr", "--model", str(model), "--n", HUGE, "--out", out], "--n is"),
        (["train", "--config", str(train_config), "--stage", "base", "--out", out], "train.batch_size is"),
    ]


def test_every_size_like_input_is_bounded_before_any_work(tmp_path, model, capsys, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    for argv, message in probes(tmp_path, model):
        start = time.monotonic()
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and message in err, (argv[:2], err)
        assert "above the limit" in err and "PIXCADE_MAX_" in err  # says how to raise it
        assert not (tmp_path / "out").exists(), argv  # refused before anything was written
        assert time.monotonic() - start < 30  # (a billion file names took minutes)


def test_the_python_api_has_the_same_bounds(model):
    from pixcade.pipeline.cascade import Cascade

    cascade = Cascade.from_pretrained(model, device="cpu")
    with pytest.raises(PixcadeError, match="above the limit"):
        cascade.generate(["a prompt"], n=10**9)
    with pytest.raises(PixcadeError, match="above the limit"):
        cascade.generate(["x" * 10**6])
    # Checked before any input file is read: these files do not exist.
    with pytest.raises(PixcadeError, match="above the limit"):
        cascade.generate(["a prompt"], n=10**9, start_image="missing.png")
    with pytest.raises(PixcadeError, match="above the limit"):
        cascade.generate(["x" * 10**6], image="missing.png", mask="missing-mask.png")


def test_a_limit_is_raised_by_its_environment_variable(monkeypatch):
    default = LIMITS["resolution"][0]
    with pytest.raises(PixcadeError, match=f"PIXCADE_MAX_RESOLUTION={default + 1}"):
        check_limit("resolution", default + 1, "--res")
    monkeypatch.setenv("PIXCADE_MAX_RESOLUTION", str(default * 2))
    assert limit("resolution") == default * 2
    check_limit("resolution", default + 1, "--res")
    monkeypatch.setenv("PIXCADE_MAX_RESOLUTION", "lots")
    with pytest.raises(PixcadeError, match="PIXCADE_MAX_RESOLUTION must be a positive integer"):
        limit("resolution")


@pytest.mark.parametrize("command", [
    ["generate", "--n", "5000", "--batch-size", "2", "--device", "cpu", "a red circle"],
    ["data", "shapes", "--n", "100000", "--res", "64"],
])
def test_ctrl_c_stops_within_two_seconds(tmp_path, model, command):
    """SIGINT while the command works: it stops promptly (the one-line "interrupted" within
    two seconds; the interpreter's own teardown with torch loaded comes after), status 130."""
    if command[0] == "generate":
        command = [*command, "--model", str(model)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "pixcade.cli", *command, "--out", str(out)],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE)
    lines: list[tuple[float, bytes]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line) for line in proc.stderr))
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not (out.is_dir() and any(p.suffix == ".png" for p in out.iterdir())):  # working now
            assert proc.poll() is None, b"".join(line for _, line in lines).decode()
            assert time.monotonic() < deadline, "the command never started working"
            time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
        reader.join(10)
    err = b"".join(line for _, line in lines).decode()
    stopped = [t for t, line in lines if line.strip().endswith(b"interrupted")]
    assert proc.returncode == 130 and stopped and "Traceback" not in err, err
    assert stopped[0] - sent < 2.0, f"took {stopped[0] - sent:.2f} s to stop"
