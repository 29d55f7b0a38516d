"""The Inception-v3 network behind published FID numbers, as a feature extractor.

FID is only comparable across papers when every paper uses the same network: the
TensorFlow Inception graph of 2015-12-05 that the original FID code shipped, which
pytorch-fid and clean-fid re-implement in PyTorch. That graph differs from torchvision's
ImageNet Inception-v3 in a few blocks, and this module reproduces those differences:

- the 3x3 average pools inside the Mixed_5x, Mixed_6b-e and Mixed_7b blocks do not count
  the zero padding (TF's ``count_include_pad=False``);
- Mixed_7c pools its fourth branch with a 3x3 *max* pool instead of an average pool;
- batch norms use eps = 0.001 and convolutions have no bias.

Features are the 2048-d "pool3" activations: the global average pool after Mixed_7c.
Input: images in [-1, 1], any size, resized to 299x299 with bilinear interpolation
(``align_corners=False``, no antialiasing), as pytorch-fid does; the network expects
exactly that [-1, 1] range (pytorch-fid's ``2 * x - 1`` on [0, 1] images).

Parameter names follow the checkpoint the FID community distributes
(``pt_inception-2015-12-05-*.pth``: torchvision-style names, ``Mixed_5b.branch1x1.conv``
and so on), so that file loads without renaming; its 1008-way ``fc`` classifier is not
needed for pool3 features and is dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from pixcade.errors import PixcadeError

FEATURE_DIM = 2048
INPUT_SIZE = 299


class ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU: every conv of the graph."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # The TF graph's 3x3/1 average pool ignores padded zeros at the borders.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class MixedA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


class ReduceB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class MixedC(nn.Module):
    """17x17 block (Mixed_6b-e) with factorised 1x7 / 7x1 convolutions."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, **row)
        self.branch7x7_3 = ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = ConvBN(c7, 192, **row)
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class ReduceD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class MixedE(nn.Module):
    """8x8 block (Mixed_7b/c) with split 1x3 / 3x1 branches.

    ``max_pool`` selects the Mixed_7c variant of the TF graph (max instead of average pool).
    """

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Images in [-1, 1] (any size) -> 2048-d pool3 features, as used for FID/KID."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = MixedA(192, 32)
        self.Mixed_5c = MixedA(256, 64)
        self.Mixed_5d = MixedA(288, 64)
        self.Mixed_6a = ReduceB(288)
        self.Mixed_6b = MixedC(768, 128)
        self.Mixed_6c = MixedC(768, 160)
        self.Mixed_6d = MixedC(768, 160)
        self.Mixed_6e = MixedC(768, 192)
        self.Mixed_7a = ReduceD(768)
        self.Mixed_7b = MixedE(1280, max_pool=False)
        self.Mixed_7c = MixedE(2048, max_pool=True)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))


# pytorch-fid's InceptionV3 wrapper stores the same layers as blocks.<i>.<j>; pooling
# layers take slots in those Sequentials, so the indices skip them.
_WRAPPER_SLOTS = {
    (0, 0): "Conv2d_1a_3x3", (0, 1): "Conv2d_2a_3x3", (0, 2): "Conv2d_2b_3x3",
    (1, 0): "Conv2d_3b_1x1", (1, 1): "Conv2d_4a_3x3",
    (2, 0): "Mixed_5b", (2, 1): "Mixed_5c", (2, 2): "Mixed_5d", (2, 3): "Mixed_6a",
    (2, 4): "Mixed_6b", (2, 5): "Mixed_6c", (2, 6): "Mixed_6d", (2, 7): "Mixed_6e",
    (3, 0): "Mixed_7a", (3, 1): "Mixed_7b", (3, 2): "Mixed_7c",
}
_WRAPPER_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.*)$")


def remap_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a checkpoint's keys onto :class:`FIDInceptionV3`'s.

    Accepts the FID checkpoint's own names (torchvision style) and pytorch-fid's
    ``InceptionV3`` wrapper names (``blocks.2.0.branch1x1.conv.weight``); drops what
    pool3 features don't use (the ``fc`` classifier, BN step counters).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        match = _WRAPPER_KEY.match(key)
        if match:
            slot = (int(match.group(1)), int(match.group(2)))
            if slot not in _WRAPPER_SLOTS:
                raise PixcadeError(f"Inception weights: unexpected key {key!r}")
            key = f"{_WRAPPER_SLOTS[slot]}.{match.group(3)}"
        if key.startswith(("fc.", "AuxLogits.")) or key.endswith("num_batches_tracked"):
            continue
        out[key] = value
    return out


def load_inception(path: str | Path, device: str = "cpu") -> FIDInceptionV3:
    """Load FID Inception weights from a local file (.safetensors, or pytorch-fid's .pth).

    A .pth file is read with ``torch.load(weights_only=True)``: a plain tensor dict,
    nothing unpickled beyond tensors. Missing or misshapen weights are an error, never
    silently random layers.
    """
    path = Path(path)
    if not path.is_file():
        raise PixcadeError(f"Inception weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors' own error type
            raise PixcadeError(f"cannot read Inception weights {path}: {err}") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input problem
            raise PixcadeError(f"cannot read Inception weights {path}: {err}") from None
        if not isinstance(state, dict):
            raise PixcadeError(f"Inception weights {path} are not a state dict")
    model = FIDInceptionV3()
    state = remap_state_dict(state)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise PixcadeError(
            f"Inception weights {path} don't fit the FID Inception-v3 layout: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]})"
        )
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise PixcadeError(
                f"Inception weights {path}: {key} has shape {tuple(value.shape)}, "
                f"expected {tuple(own[key].shape)}"
            )
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()
