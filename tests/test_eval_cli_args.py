"""`pixcade eval fid|kid|clip-score|shapes|sr-psnr`: impossible numbers are one-line errors (exit 2)
before any image is read, not a traceback, a NaN or one giant batch."""

from __future__ import annotations

import pytest

from pixcade.cli import main


@pytest.mark.parametrize("args, message", [
    (["fid", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["fid", "--kid", "--kid-subsets", "0"], "--kid-subsets must be at least 1, got 0"),
    (["kid", "--kid-subset-size", "1"], "--kid-subset-size must be at least 2, got 1"),
    (["clip-score", "--batch-size", "-1"], "--batch-size must be at least 1, got -1"),
    (["shapes", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["sr-psnr", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
])
def test_bad_numbers_exit_2_with_one_line(tmp_path, capsys, args, message):
    if args[0] == "clip-score":
        where = ["--images", str(tmp_path), "--clip", str(tmp_path)]
    elif args[0] in ("shapes", "sr-psnr"):  # checked before the (missing) model is opened
        where = ["--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "out")]
    else:
        where = ["--real", str(tmp_path), "--fake", str(tmp_path), "--features", "py:nowhere:none"]
    assert main(["eval", *args, *where]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"pixcade eval {args[0]}: error: {message}"
