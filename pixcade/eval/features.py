"""Feature extractors for FID/KID, and which of them give numbers comparable to papers.

Only the FID Inception-v3 with the TF-Inception weights gives numbers comparable to
published FID. The others are useful for relative comparisons (model A vs model B on the
same data, a training curve), and every result made with them says so.

Names accepted by ``--features``:
- ``inception``: FID Inception-v3, pool3 (2048-d); needs ``--inception-weights FILE``.
- ``clip:DIR``: the image embedding of a local CLIP model (see ``clip_score``).
- ``shapes:FILE``: pixcade's small CNN trained on the shapes domain
  (``pixcade eval train-shapes-features``).
- ``py:MODULE:FACTORY``: ``FACTORY()`` from an importable module returns a callable (e.g.
  an ``nn.Module``) mapping images ``[B, 3, H, W]`` in [-1, 1] to features ``[B, D]``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch

from pixcade.data.transforms import to_pil
from pixcade.errors import PixcadeError
from pixcade.eval.clip_score import load_clip
from pixcade.eval.inception import load_inception
from pixcade.eval.shapes_features import load_shapes_features

NOT_COMPARABLE = "NOT comparable to published FID/KID (features are not the TF-Inception pool3)"


@dataclass
class FeatureExtractor:
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    comparable: bool

    @property
    def note(self) -> str:
        if self.comparable:
            return ("FID Inception-v3 pool3 features, bilinear resize to 299; comparable to "
                    "published FID when the weights are the TF-Inception (2015-12-05) ones")
        return NOT_COMPARABLE

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images)


def get_extractor(spec: str | None, inception_weights: str | None = None, device: str = "cpu") -> FeatureExtractor:
    if spec is None:
        if inception_weights is None:
            raise PixcadeError(
                "no features: pass --inception-weights FILE (FID Inception-v3, e.g. "
                "pt_inception-2015-12-05-*.pth) or --features clip:DIR | shapes:FILE | py:MODULE:FACTORY"
            )
        spec = "inception"
    if spec == "inception":
        if inception_weights is None:
            raise PixcadeError("--features inception needs --inception-weights FILE")

        return FeatureExtractor("inception-v3-fid", load_inception(inception_weights, device), True)
    if inception_weights is not None:
        raise PixcadeError(f"--inception-weights is only used with --features inception, not {spec!r}")
    kind, _, arg = spec.partition(":")
    if kind == "clip" and arg:
        clip = load_clip(arg, device)
        return FeatureExtractor(f"clip:{clip.name}", lambda x: clip.encode_images([to_pil(im) for im in x]), False)
    if kind == "shapes" and arg:
        return FeatureExtractor(f"shapes-cnn:{arg}", load_shapes_features(arg, device), False)
    if kind == "py" and ":" in arg:
        module_name, _, attr = arg.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise PixcadeError(f"cannot import feature extractor {arg!r}: {err}") from None
        fn = factory()
        if isinstance(fn, torch.nn.Module):
            fn = fn.to(device).eval()
        return FeatureExtractor(f"py:{arg}", fn, False)
    raise PixcadeError(
        f"unknown --features {spec!r} (use inception, clip:DIR, shapes:FILE or py:MODULE:FACTORY)"
    )
