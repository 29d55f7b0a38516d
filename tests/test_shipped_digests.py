"""The shipped shapes model's images, pinned by SHA-256 of their pixels.

Refactors of the sampling path (options, samplers, stages, the pipeline) must leave every
valid input's images byte-identical. These digests were computed with the code as it was
before the sampling options were unified (main at cded934), on CPU with one thread (as
conftest sets), torch 2.13. A change that is meant to alter images updates them in the
same commit and says why; any other failure here is a behaviour change.

Each case is a few steps per stage so the file runs in seconds on CPU; together they cover
both stages, the three samplers, per-stage overrides of every option, the saved defaults
and a run that starts at the super-resolution stage.

Every case samples in fp32, named explicitly: the default precision, ``auto``, is bf16 on a
machine that computes bf16 natively and fp32 elsewhere, and bf16's images depend on the
CPU's kernels, so only fp32 can be pinned. What ``auto`` resolves to is checked against the
explicit dtypes at the end of the file.

fp32 pixels depend on the vector width of the CPU's kernels too (oneDNN's convolutions sum
in another order with AVX2 than with AVX-512; capping oneDNN or ATen to narrower ones here
moved a few SR pixels by one level), so each case pins one set of digests per CPU
capability torch reports, from the same code: ``AVX512`` as first computed (on an AVX-512
machine), ``AVX2`` on a Zen 3 EPYC (2026-12-05, main at 55b311d, whose
``AVX512`` digests pass). A CPU of another capability fails with the digests to pin.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

import pixcade
from pixcade.cli import main
from pixcade.diffusion import precision
from pixcade.pipeline.cascade import Cascade

SHIPPED = Path(pixcade.__file__).parent / "weights" / "shapes"
PROMPTS = ["a red circle", "two blue squares"]


@pytest.fixture(scope="module")
def cascade() -> Cascade:
    return Cascade.from_pretrained(SHIPPED)


def digests(out: dict[str, list[Image.Image]]) -> dict[str, list[str]]:
    return {
        stage: [hashlib.sha256(f"{im.mode} {im.size} ".encode() + im.tobytes()).hexdigest()[:16]
                for im in images]
        for stage, images in out.items()
    }


def start_image() -> Image.Image:
    """A 32px red disc on white, drawn without randomness."""
    im = Image.new("RGB", (32, 32), "white")
    ImageDraw.Draw(im).ellipse((6, 8, 24, 26), fill=(220, 30, 30))
    return im


CASES = {
    "dpm++ both stages": (
        dict(prompts=PROMPTS, seed=7, steps=4, dtype="fp32"),
        {"AVX512": {"base": ["4464c11321e1e906", "1977891fdd14016d"],
                    "sr": ["87fe44a9f425e1ac", "0bf52189af8f33d8"]},
         "AVX2": {"base": ["4464c11321e1e906", "914c6ae46e37c336"],
                  "sr": ["cc600c4fe909ef47", "b31f65a2072952e1"]}},
    ),
    "ddim both stages": (
        dict(prompts=PROMPTS, seed=7, sampler="ddim", steps=4, dtype="fp32"),
        {"AVX512": {"base": ["84a71421184ec113", "7cb4d0b7c0c2ffa3"],
                    "sr": ["104e9de78645badc", "81a8acc5689efc46"]},
         "AVX2": {"base": ["84a71421184ec113", "b139278d7258b960"],
                  "sr": ["948763b4a1e76b21", "b21807e3d1ea5c42"]}},
    ),
    "ddpm, every option per stage": (
        dict(prompts=PROMPTS, seed=7, sampler={"base": "ddpm", "sr": "ddim"}, steps={"base": 3, "sr": 2},
             guidance_weight={"base": 3.0, "sr": 1.5}, threshold="dynamic:95", aug_level=0.3, dtype="fp32"),
        {"AVX512": {"base": ["d6cbb0026385b0fb", "df3db00a9cff363e"],
                    "sr": ["8cfc2be01909113e", "321e2c8a3e5020db"]},
         "AVX2": {"base": ["ac6e67c8610ea7af", "fb3d09e69787542d"],
                  "sr": ["8d840a35e511871a", "a1ceb6868f6eae4b"]}},
    ),
    "saved defaults": (
        dict(prompts=["a small green triangle"], seed=3, dtype="fp32"),
        {"AVX512": {"base": ["851fa5c537d10734"],
                    "sr": ["cbf5c92e031ac950"]},
         "AVX2": {"base": ["851fa5c537d10734"], "sr": ["ba51650bc57b98a5"]}},
    ),
    "sr only from a start image": (
        dict(prompts=["a red circle"], seed=5, stages=["sr"], start_image=start_image(),
             sampler="ddim", steps=3, aug_level=0.2, dtype="fp32"),
        {"AVX512": {"sr": ["1f3b295a6baa37e4"]},
         "AVX2": {"sr": ["4d71c624ac5ff510"]}},
    ),
}


def pinned(case: str, got: dict[str, list[str]]) -> dict[str, list[str]]:
    """The digests ``case`` pins for this CPU's capability (see the module's docstring)."""
    capability = torch.backends.cpu.get_cpu_capability()
    by_cpu = CASES[case][1]
    if capability not in by_cpu:
        pytest.fail(f"no digests pinned for CPU capability {capability} (pinned: {', '.join(by_cpu)}); "
                    f"from a commit that passes elsewhere, case {case!r} gives {got}")
    return by_cpu[capability]


@pytest.mark.parametrize("case", list(CASES))
def test_shipped_model_images_are_unchanged(cascade: Cascade, case: str) -> None:
    kwargs = CASES[case][0]
    got = digests(cascade.generate(return_stages=True, progress=False, **kwargs))
    assert got == pinned(case, got)


def test_generate_cli_writes_the_same_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's per-stage spellings reach the same images as the API case they spell."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "out"
    rc = main(["generate", *PROMPTS, "--seed", "7", "--out", str(out), "--device", "cpu", "--save-stages",
               "--sampler", "base=ddpm,sr=ddim", "--steps", "3,sr=2", "--guidance", "base=3,sr=1.5",
               "--threshold", "dynamic:95", "--aug-level", "0.3", "--dtype", "fp32"])
    assert rc == 0
    images = {
        "base": [Image.open(out / "stages" / "base" / f"p000{p}_i00.png") for p in range(2)],
        "sr": [Image.open(out / f"p000{p}_i00.png") for p in range(2)],
    }
    got = digests(images)
    assert got == pinned("ddpm, every option per stage", got)


@pytest.mark.parametrize("native", [False, True])
def test_auto_samples_in_bf16_only_where_bf16_is_native(
    cascade: Cascade, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    """The default dtype, auto, gives exactly the images of fp32 on a device without native
    bf16 and of bf16 on one with it (the probe is set here, so this holds on any CPU)."""
    monkeypatch.setattr(precision, "computes_bf16", lambda device: native)
    kwargs = dict(prompts=PROMPTS, seed=7, steps=2, return_stages=True, progress=False)
    auto = digests(cascade.generate(**kwargs))
    assert auto == digests(cascade.generate(dtype="bf16" if native else "fp32", **kwargs))
    assert (auto == digests(cascade.generate(dtype="fp32", **kwargs))) is not native
