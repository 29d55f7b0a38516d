"""Editing through the whole cascade (tiny random cascade): image-to-image at strengths 0
and 1, inpainting that keeps the unmasked pixels exactly, negative prompts, precision,
offloading and their one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixcade.data.transforms import square_tensor, to_pil
from pixcade.errors import PixcadeError
from pixcade.pipeline.cascade import Cascade
from pixcade.pipeline.edits import EditRequest, mask_tensor
from pixcade.pipeline.request import Request
from tiny_cascade import BASE_RES, SR_RES, build_tiny_cascade

PROMPTS = ["a red circle", "a blue square to the left of a green star"]


@pytest.fixture(scope="module")
def cascade() -> Cascade:
    return build_tiny_cascade(steps=3)


def _image(side: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def _left_half_mask(side: int) -> Image.Image:
    m = np.zeros((side, side), dtype=np.uint8)
    m[:, : side // 2] = 255
    return Image.fromarray(m)


def _arrays(images) -> list[np.ndarray]:
    return [np.asarray(im) for im in images]


def test_strength_zero_is_the_inputs_own_cascade_path(cascade):
    image = _image(SR_RES)
    edited = cascade.generate(PROMPTS, n=2, seed=3, image=image, edit=EditRequest(strength=0.0),
                              return_stages=True, progress=False)
    # the base stage returns the input itself (at its resolution) ...
    base_in = to_pil(square_tensor(image, BASE_RES))  # the input as the base stage sees it
    assert all(np.array_equal(a, np.asarray(base_in)) for a in _arrays(edited["base"]))
    # ... and the SR stage super-resolves it exactly as a run started from it does
    started = cascade.generate(PROMPTS, n=2, seed=3, start_image=base_in, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(_arrays(edited["sr"]), _arrays(started)))


@pytest.mark.parametrize("sampler", ["ddim", "dpm++", "ddpm"])
def test_strength_one_is_plain_generation(cascade, sampler):
    plain = cascade.generate(PROMPTS, n=2, seed=5, sampler=sampler, progress=False)
    edited = cascade.generate(PROMPTS, n=2, seed=5, sampler=sampler, image=_image(48),
                              edit=EditRequest(strength=1.0), progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(_arrays(plain), _arrays(edited)))


def test_middle_strengths_stay_nearer_the_input(cascade):
    image = _image(SR_RES, seed=1)
    target = np.asarray(to_pil(square_tensor(image, BASE_RES)), dtype=float)
    dist = []
    for s in (0.2, 0.6, 1.0):
        out = cascade.generate(PROMPTS[0], n=4, seed=0, image=image, edit=EditRequest(strength=s),
                               stop_after="base", progress=False)
        dist.append(np.mean([np.abs(np.asarray(o, dtype=float) - target).mean() for o in out]))
    assert dist[0] < dist[1] < dist[2]


@pytest.mark.parametrize("resample", [0, 2])
def test_inpainting_keeps_unmasked_pixels_exactly(cascade, resample):
    image, mask = _image(SR_RES, seed=2), _left_half_mask(SR_RES)
    out = cascade.generate(PROMPTS, n=2, seed=1, image=image, mask=mask,
                           edit=EditRequest(resample=resample), return_stages=True, progress=False)
    src = np.asarray(image)
    for a in _arrays(out["sr"]):
        assert np.array_equal(a[:, SR_RES // 2:], src[:, SR_RES // 2:])  # kept half: exact
        assert np.abs(a[:, : SR_RES // 2].astype(int) - src[:, : SR_RES // 2]).mean() > 10  # redrawn
    # the base stage kept its (downsized) unmasked half too
    base_src = np.asarray(to_pil(square_tensor(image, BASE_RES)))
    for a in _arrays(out["base"]):
        assert np.array_equal(a[:, BASE_RES // 2:], base_src[:, BASE_RES // 2:])


def test_soft_edge_blends_only_inside_the_mask(cascade):
    image, mask = _image(SR_RES, seed=2), _left_half_mask(SR_RES)
    hard = cascade.generate(PROMPTS[0], seed=1, image=image, mask=mask, progress=False)[0]
    soft = cascade.generate(PROMPTS[0], seed=1, image=image, mask=mask, edit=EditRequest(soft_edge=3),
                            progress=False)[0]
    h, s, src = (np.asarray(x).astype(int) for x in (hard, soft, image))
    assert np.array_equal(s[:, SR_RES // 2:], src[:, SR_RES // 2:])
    assert np.array_equal(s[:, :8], h[:, :8])  # far from the edge: the generated pixels
    edge = slice(SR_RES // 2 - 3, SR_RES // 2)
    # next to the edge: between the generated and the kept pixels
    assert np.abs(s[:, edge] - src[:, edge]).mean() < np.abs(h[:, edge] - src[:, edge]).mean()


def test_each_image_gets_its_own_prompts_inputs_across_batches(cascade):
    """A batch that straddles two prompts (3 of 4 images, then 1) edits each image with its
    own prompt's image, mask and negative prompt: as when all four share one batch."""
    kw = dict(n=2, seed=6, sampler="ddim", image=[_image(SR_RES, seed=3), _image(SR_RES, seed=4)],
              mask=[_left_half_mask(SR_RES), _left_half_mask(SR_RES).transpose(Image.Transpose.ROTATE_90)],
              negative_prompt=["a green star", "a red circle"], edit=EditRequest(strength=0.8),
              return_stages=True, progress=False)
    together = cascade.generate(PROMPTS, batch_size=4, **kw)
    straddled = cascade.generate(PROMPTS, batch_size=3, **kw)
    for name in ("base", "sr"):
        # batched kernels round differently: a level on a rare pixel, not a wrong input's image
        diff = np.abs(np.stack(_arrays(together[name])).astype(int) - np.stack(_arrays(straddled[name])))
        assert (diff > 1).mean() < 1e-3 and diff.mean() < 0.05, (name, diff.max(), diff.mean())
    # and the inputs really differ per prompt: the two prompts' first images are far apart
    a, b = _arrays(together["sr"])[0], _arrays(together["sr"])[2]
    assert np.abs(a.astype(int) - b).mean() > 10


def test_an_input_given_for_every_prompt_is_read_once(tmp_path, monkeypatch):
    # A prompts file of thousands with one --image / --mask / --start-image: one decoded copy
    # shared by every prompt, not one per prompt.
    _image(SR_RES).save(tmp_path / "image.png")
    _left_half_mask(SR_RES).save(tmp_path / "mask.png")
    reads = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: reads.append(str(path)) or real_open(path, *a, **k))
    edit = Request.build(["a"] * 50, image=tmp_path / "image.png", mask=tmp_path / "mask.png")
    start = Request.build(["a"] * 50, start_image=tmp_path / "image.png")
    assert sorted(reads) == sorted(str(tmp_path / f) for f in ("image.png", "mask.png", "image.png"))
    assert all(im is edit.images[0] for im in edit.images) and all(m is edit.masks[0] for m in edit.masks)
    assert all(im is start.starts[0] for im in start.starts)
    # one per prompt: each its own
    two = Request.build(["a", "b"], image=[_image(SR_RES, seed=1), _image(SR_RES, seed=2)])
    assert not np.array_equal(np.asarray(two.images[0]), np.asarray(two.images[1]))


def test_masks_shrink_so_no_redrawn_pixel_is_kept():
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[5, 9] = 255  # one pixel
    small = mask_tensor(Image.fromarray(mask), 16)
    assert small.shape == (1, 16, 16) and small[0, 2, 4] == 1.0 and small.sum() == 1.0
    assert torch.equal(mask_tensor(Image.fromarray(mask), 64)[0, 10:12, 18:20], torch.ones(2, 2))


def test_negative_prompt_equal_to_the_prompt_is_the_unguided_result(cascade):
    """u + w (c - u) with u = c is c: guidance at any weight with the prompt as its own
    negative gives the conditional (guidance weight 1) result."""
    for w in (3.0, 7.5):
        neg = cascade.generate(PROMPTS, n=2, seed=2, guidance_weight=w, negative_prompt=PROMPTS,
                               progress=False)
        unguided = cascade.generate(PROMPTS, n=2, seed=2, guidance_weight=1.0, progress=False)
        for a, b in zip(_arrays(neg), _arrays(unguided)):
            # one forward of 2B against one of B: equal up to float rounding (1 level)
            assert np.abs(a.astype(int) - b).max() <= 1


def test_negative_prompts_change_guided_images_and_empty_ones_do_not(cascade):
    plain = cascade.generate(PROMPTS, seed=2, progress=False)
    empty = cascade.generate(PROMPTS, seed=2, negative_prompt="", progress=False)
    other = cascade.generate(PROMPTS, seed=2, negative_prompt=["a green star", "a red circle"], progress=False)
    assert all(np.abs(a.astype(int) - b).max() <= 1 for a, b in zip(_arrays(plain), _arrays(empty)))
    assert all(np.abs(a.astype(int) - b).mean() > 2 for a, b in zip(_arrays(plain), _arrays(other)))


def test_bf16_sampling_is_near_fp32(cascade):
    fp32 = cascade.generate(PROMPTS, seed=4, dtype="fp32", progress=False)
    bf16 = cascade.generate(PROMPTS, seed=4, dtype="bf16", progress=False)
    diffs = [np.abs(a.astype(int) - b).mean() for a, b in zip(_arrays(fp32), _arrays(bf16))]
    assert 0 < max(diffs) < 8  # rounded, not broken: a few levels of 255 on average


def test_offload_keeps_weights_on_the_cpu_and_gives_the_same_images(cascade, monkeypatch):
    moves = []
    original = torch.nn.Module.to

    def spy(module, *args, **kwargs):
        moves.append((type(module).__name__, str(args[0]) if args else str(kwargs)))
        return original(module, *args, **kwargs)

    plain = cascade.generate(PROMPTS, seed=6, progress=False)
    cascade.to("cpu", offload=True)
    try:
        assert cascade.offloading and cascade.device == torch.device("cpu")
        monkeypatch.setattr(torch.nn.Module, "to", spy)
        offloaded = cascade.generate(PROMPTS, seed=6, progress=False)
    finally:
        monkeypatch.undo()
        cascade.to("cpu")
    assert all(np.array_equal(a, b) for a, b in zip(_arrays(plain), _arrays(offloaded)))
    # each network goes to the run device for its turn and back: encoder, base, then SR
    names = [m for m, _ in moves]
    assert names[0] != "EfficientUNet" and names[1] == names[0]  # the text encoder, there and back
    assert names[2:] == ["EfficientUNet"] * 4 and [d for _, d in moves] == ["cpu"] * 6


@pytest.mark.parametrize("kw,message", [
    ({"image": "/nonexistent.png"}, "cannot read image"),
    ({"image": Image.new("RGB", (32, 32)), "mask": Image.new("L", (32, 16))}, "the mask is 32x16 but the image is 32x32"),
    ({"image": Image.new("RGB", (32, 32)), "mask": Image.new("L", (16, 16))}, "must be the same size"),
    ({"image": Image.new("RGB", (32, 32)), "edit": EditRequest}, None),
    ({"negative_prompt": ["a", "b", "c"]}, "3 negative prompts for 2 prompts"),
    ({"mask": Image.new("L", (32, 32))}, "without an image to edit"),
    ({"dtype": "fp16"}, "fp16 sampling needs an accelerator"),
    ({"dtype": "fp8"}, "unknown dtype"),
    ({"start_image": Image.new("RGB", (16, 16)), "image": Image.new("RGB", (32, 32))}, "starts at the base stage"),
])
def test_bad_edits_are_one_line_errors(cascade, kw, message):
    if message is None:  # strength outside [0, 1] is refused when the request is made
        for bad in (-0.5, 1.01, float("nan")):
            with pytest.raises(PixcadeError, match=r"strength must be a number in \[0, 1\]"):
                EditRequest(strength=bad)
        return
    with pytest.raises(PixcadeError, match=message) as err:
        cascade.generate(PROMPTS, progress=False, **kw)
    assert "\n" not in str(err.value)
