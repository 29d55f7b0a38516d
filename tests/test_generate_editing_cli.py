"""`pixcade generate` with editing, negative prompts, precision and offloading: the same
images as `Cascade.generate`, and bad input as one-line errors with nothing written."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixcade.cli import main
from pixcade.pipeline.cascade import Cascade
from pixcade.pipeline.edits import EditRequest
from tiny_cascade import SR_RES, save_tiny_cascade

PROMPTS = ["a red square", "two blue circles"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_cascade(tmp_path_factory.mktemp("model"))


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header (8-bit greyscale) of that size, with no pixel data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (SR_RES, SR_RES, 3), dtype=np.uint8)).save(d / "image.png")
    mask = np.zeros((SR_RES, SR_RES), dtype=np.uint8)
    mask[:, : SR_RES // 2] = 255
    Image.fromarray(mask).save(d / "mask.png")
    Image.fromarray(mask[:, :20]).save(d / "narrow_mask.png")
    png = (d / "mask.png").read_bytes()
    (d / "truncated_mask.png").write_bytes(png[: len(png) // 2])
    # A PNG whose header claims 20000x20000 px: Pillow refuses it with DecompressionBombError,
    # which is not an OSError.
    (d / "huge_mask.png").write_bytes(_png_claiming(20000, 20000))
    (d / "broken.png").write_bytes(b"not a png")
    (d / "negatives.txt").write_text("a green star\n\n")
    (d / "one_negative.txt").write_text("a green star\n")
    return {p.stem: p for p in d.iterdir()}


@pytest.fixture(autouse=True)
def no_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def generate(model: Path, out: Path, *args: str) -> int:
    return main(["generate", "--model", str(model), "--out", str(out), "--device", "cpu", *args])


def test_inpainting_from_the_cli_matches_the_api(model, files, tmp_path):
    out = tmp_path / "out"
    args = ["--image", str(files["image"]), "--mask", str(files["mask"]), "--strength", "1",
            "--negative-prompts", str(files["negatives"]), "--seed", "4", "--resample", "1"]
    assert generate(model, out, *PROMPTS, *args) == 0
    cli = [np.asarray(Image.open(out / f"p000{k}_i00.png")) for k in range(2)]
    api = Cascade.from_pretrained(model).generate(
        PROMPTS, seed=4, image=files["image"], mask=files["mask"], negative_prompt=["a green star", ""],
        edit=EditRequest(resample=1), progress=False,
    )
    src = np.asarray(Image.open(files["image"]))
    for a, b in zip(cli, api):
        assert np.array_equal(a, np.asarray(b))
        assert np.array_equal(a[:, SR_RES // 2:], src[:, SR_RES // 2:])


def test_img2img_bf16_and_offload_from_the_cli(model, files, tmp_path):
    out = tmp_path / "out"
    assert generate(model, out, PROMPTS[0], "--image", str(files["image"]), "--strength", "0.5",
                    "--dtype", "bf16", "--offload", "--negative-prompt", "a blue star") == 0
    api = Cascade.from_pretrained(model).generate(
        PROMPTS[0], image=files["image"], edit=EditRequest(strength=0.5), dtype="bf16",
        negative_prompt="a blue star", progress=False,
    )
    assert np.array_equal(np.asarray(Image.open(out / "p0000_i00.png")), np.asarray(api[0]))


@pytest.mark.parametrize("args,message", [
    (["--image", "{broken}"], "cannot read image"),
    (["--image", "{missing}"], "cannot read image"),
    (["--image", "{image}", "--mask", "{narrow_mask}"], "the mask is 20x32 but the image is 32x32"),
    (["--image", "{image}", "--mask", "{truncated_mask}"], "cannot read mask .*truncated_mask.png: .*truncated"),
    (["--image", "{image}", "--mask", "{huge_mask}"], "cannot read mask .*huge_mask.png: Image size .* exceeds"),
    (["--image", "{image}", "--strength", "1.5"], r"strength must be a number in \[0, 1\], got 1.5"),
    (["--image", "{image}", "--strength", "-0.1"], r"strength must be a number in \[0, 1\]"),
    (["--strength", "0.5"], "need --image"),
    (["--negative-prompts", "{one_negative}"], "1 negative prompts in .* for 2 prompts"),
    (["--dtype", "fp16"], "fp16 sampling needs an accelerator"),
    (["--dtype", "base=bf16,sr=half"], "unknown dtype 'half'"),
    (["--device", "mps"], "--device mps: device 'mps' asked for, but this torch has no usable MPS"),
    (["--image", "{image}", "--stages", "sr"], "stage 'sr' is a super-resolution stage: it needs a start image"),
    (["--image", "{image}", "--mask", "{mask}", "--soft-edge", "-2"], "soft edge must be"),
])
def test_bad_input_is_one_line_and_nothing_is_written(model, files, tmp_path, capsys, args, message):
    names = {k: str(v) for k, v in files.items()} | {"missing": str(tmp_path / "missing.png")}
    out = tmp_path / "out"
    code = generate(model, out, *PROMPTS, *[a.format(**names) for a in args])  # a later --device wins
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert re.search(message, err), err
    assert not out.exists()


def test_a_flag_replaces_a_saved_dtype_the_device_cannot_run(tmp_path, capsys):
    """Only the settings that will run are checked: a model saved to sample in fp16 runs on
    the CPU with --dtype fp32 (the same images as the API's), and is refused without it."""
    cascade = Cascade.from_pretrained(save_tiny_cascade(tmp_path / "tiny"))
    for stage in cascade.stages:
        stage.config.sampling = stage.config.sampling.replace(dtype="fp16")
    cascade.save_pretrained(tmp_path / "fp16")
    assert generate(tmp_path / "fp16", tmp_path / "refused", PROMPTS[0]) == 2
    assert "fp16 sampling needs an accelerator" in capsys.readouterr().err
    assert generate(tmp_path / "fp16", tmp_path / "out", PROMPTS[0], "--dtype", "fp32") == 0
    api = Cascade.from_pretrained(tmp_path / "fp16").generate(PROMPTS[0], dtype="fp32", progress=False)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "p0000_i00.png")), np.asarray(api[0]))
