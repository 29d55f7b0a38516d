"""Stage transforms: shapes, ranges, the SR pair's consistency and crop alignment."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pixcade.data.samples import Skipped
from pixcade.data.transforms import (
    RESAMPLE,
    ImageTransform,
    SuperResTransform,
    collate,
    resize_center_crop,
    stage_transform,
    to_pil,
    to_tensor,
)
from pixcade.errors import PixcadeError


def textured(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Smooth random colour field: detail at a few pixels' scale, so shifts show."""
    coarse = np.random.default_rng(seed).integers(0, 256, (size[1] // 4 + 1, size[0] // 4 + 1, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((size[0] + 4, size[1] + 4), Image.Resampling.BILINEAR).crop((0, 0) + size)


def sample(image: Image.Image, key: str = "k") -> dict:
    return {"image": image, "caption": "a caption", "key": key}


def test_tensor_conversions_range_and_round_trip():
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    array[0, 0], array[0, 1] = 0, 255
    t = to_tensor(Image.fromarray(array))
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    assert t.min() == -1.0 and t.max() == 1.0
    np.testing.assert_array_equal(np.asarray(to_pil(t)), array)


def test_resize_center_crop_keeps_the_central_square():
    # A 60x40 image whose central 40x40 square is grey 200 and whose side bands are black.
    array = np.zeros((40, 60, 3), np.uint8)
    array[:, 10:50] = 200
    out = np.asarray(resize_center_crop(Image.fromarray(array), 16)).astype(int)
    assert out.shape == (16, 16, 3)
    assert np.abs(out[:, 2:-2] - 200).max() <= 2  # only the outermost pixels feel the bands
    tall = Image.fromarray(np.ascontiguousarray(array.transpose(1, 0, 2)))
    assert resize_center_crop(tall, 16).size == (16, 16)
    same = textured((16, 16))
    assert resize_center_crop(same, 16) is same


def test_resize_is_antialiased():
    # A one-pixel checkerboard averages to mid-grey when shrunk; point sampling would alias.
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    out = np.asarray(resize_center_crop(Image.fromarray(board).convert("RGB"), 8)).astype(int)
    assert np.abs(out - 127.5).max() < 8


@pytest.mark.parametrize("size", [(40, 30), (10, 25), (64, 64)])
def test_base_transform_shape_and_range(size):
    out = ImageTransform(32)(sample(textured(size)))
    assert out["image"].shape == (3, 32, 32)
    assert -1.0 <= out["image"].min() and out["image"].max() <= 1.0
    assert out["caption"] == "a caption" and out["key"] == "k"
    assert "lowres" not in out


def test_sr_pair_without_crop_is_one_image_at_two_resolutions():
    out = SuperResTransform(64, 16)(sample(textured((80, 70))))
    assert out["image"].shape == (3, 64, 64) and out["lowres"].shape == (3, 16, 16)
    down = to_tensor(to_pil(out["image"]).resize((16, 16), RESAMPLE))
    torch.testing.assert_close(out["lowres"], down, atol=1e-6, rtol=0)


def crop_offset(big: np.ndarray, crop: np.ndarray) -> tuple[int, int]:
    """Where `crop` lies in `big`, by exhaustive exact search."""
    c = crop.shape[0]
    hits = [(y, x) for y in range(big.shape[0] - c + 1) for x in range(big.shape[1] - c + 1)
            if np.array_equal(big[y:y + c, x:x + c], crop)]
    assert len(hits) == 1
    return hits[0]


def test_random_crops_align_with_the_lowres_grid():
    t = SuperResTransform(32, 8, train_crop=12, seed=5)  # scale 4: origins in {0, 4, ..., 20}
    image = textured((32, 32), seed=1)
    full_low = np.asarray(image.resize((8, 8), RESAMPLE))
    big = np.asarray(image)
    origins = set()
    for i in range(40):
        out = t(sample(image, key=f"k{i}"))
        assert out["image"].shape == (3, 12, 12) and out["lowres"].shape == (3, 3, 3)
        y, x = crop_offset(big, np.asarray(to_pil(out["image"])))
        assert y % 4 == 0 and x % 4 == 0
        # The low-res crop is the same region of the whole image's low-res version.
        np.testing.assert_array_equal(np.asarray(to_pil(out["lowres"])), full_low[y // 4:y // 4 + 3, x // 4:x // 4 + 3])
        origins.add((y, x))
    assert len({y for y, _ in origins}) >= 4 and len({x for _, x in origins}) >= 4


def test_sr_crop_pair_is_consistent_and_a_misaligned_pair_is_not():
    # The paper's shape, scaled down: 256 -> 1024 trained on 64 -> 256 crops.
    t = SuperResTransform(128, 32, train_crop=32, seed=0)
    out = t(sample(textured((150, 140), seed=2), key="img"))
    assert out["image"].shape == (3, 32, 32) and out["lowres"].shape == (3, 8, 8)
    down = to_tensor(to_pil(out["image"]).resize((8, 8), RESAMPLE))
    inner = (slice(None), slice(1, -1), slice(1, -1))  # the filter reaches past the crop's edge
    err = (down[inner] - out["lowres"][inner]).abs().mean()
    shifted = (down[:, 1:-1, 1:-1] - out["lowres"][:, 2:, 1:-1]).abs().mean()
    assert err < 0.02 and shifted > 5 * err


def test_crops_are_deterministic_per_seed_epoch_and_key():
    image = textured((64, 64), seed=3)
    a = SuperResTransform(64, 16, train_crop=16, seed=7)
    b = SuperResTransform(64, 16, train_crop=16, seed=7)

    def crops(t, keys):
        return torch.stack([t(sample(image, key))["image"] for key in keys])

    keys = [f"k{i}" for i in range(12)]
    assert torch.equal(crops(a, keys), crops(b, keys))
    assert torch.equal(crops(a, keys[::-1]), crops(b, keys).flip(0))  # order doesn't matter
    b.set_epoch(1)
    assert not torch.equal(crops(a, keys), crops(b, keys))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(a(sample(image), generator=g1)["image"], a(sample(image), generator=g2)["image"])


def test_sr_transform_rejects_bad_geometry():
    with pytest.raises(PixcadeError, match="lowres_resolution"):
        SuperResTransform(64, 64)
    with pytest.raises(PixcadeError, match="multiple of lowres_resolution"):
        SuperResTransform(64, 24, train_crop=16)
    with pytest.raises(PixcadeError, match="train_crop must be a multiple of 4"):
        SuperResTransform(64, 16, train_crop=18)
    with pytest.raises(PixcadeError, match="train_crop"):
        SuperResTransform(64, 16, train_crop=128)


def test_stage_transform_follows_the_stage_config():
    base = SimpleNamespace(name="base", resolution=16, lowres_resolution=None, train_crop=None)
    sr = SimpleNamespace(name="sr", resolution=64, lowres_resolution=16, train_crop=32)
    assert isinstance(stage_transform(base), ImageTransform)
    t = stage_transform(sr, seed=3)
    assert isinstance(t, SuperResTransform) and (t.train_crop, t.seed) == (32, 3)
    with pytest.raises(PixcadeError, match="train_crop"):
        stage_transform(SimpleNamespace(name="b", resolution=16, lowres_resolution=None, train_crop=8))


def test_collate_stacks_tensors_keeps_captions_and_sets_skips_aside():
    t = SuperResTransform(16, 8)
    items = [t(sample(textured((20, 20), i), key=f"k{i}")) for i in range(3)]
    items.insert(1, Skipped("bad", "corrupt"))
    batch = collate(items)
    assert batch["image"].shape == (3, 3, 16, 16) and batch["lowres"].shape == (3, 3, 8, 8)
    assert batch["key"] == ["k0", "k1", "k2"] and batch["caption"] == ["a caption"] * 3
    assert batch["skipped"] == [Skipped("bad", "corrupt")]
    assert torch.equal(batch["image"][1], items[2]["image"])
    empty = collate([Skipped("x", "y")])
    assert "image" not in empty and empty["key"] == [] and len(empty["skipped"]) == 1
    with pytest.raises(PixcadeError, match="transformed"):
        collate([sample(textured((8, 8)))])


@pytest.mark.parametrize("size", [(33, 32), (40, 27), (32, 45), (24, 24)])
def test_a_start_image_is_framed_exactly_as_a_training_image(size):
    # Odd size differences put the centred square half a pixel off the pixel grid: an
    # integer crop there shifts the start image by half a pixel against the training data.
    from pixcade.pipeline.cascade import Cascade
    from pixcade.stage import Stage, StageConfig
    from pixcade.nn.configs import get_preset

    image = textured(size)
    sr = StageConfig(name="sr", resolution=32, lowres_resolution=16, unet=get_preset("tiny-sr"))
    cascade = Cascade([Stage(StageConfig(name="base", resolution=16, unet=get_preset("tiny-base"))), Stage(sr)])
    plan = cascade.plan(stages=["sr"], start_resolution=16)
    start = cascade.start_tensor(plan, [image])[0]
    trained = ImageTransform(16)({"image": image, "caption": "", "key": "k"})["image"]
    assert torch.equal(start, trained)
