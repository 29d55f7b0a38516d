"""FID and KID between two image sets, from features of any extractor.

FID (Heusel et al. 2017) fits a Gaussian to each set's features and takes the Fréchet
distance between the two: ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``. KID
(Binkowski et al. 2018) is the unbiased squared MMD with the cubic polynomial kernel
``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets; unlike FID it is unbiased in
the sample size, so it suits small sets. Which features make the number comparable to
published ones is the feature extractor's business (see ``pixcade.eval.features``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pixcade.data import transforms
from pixcade.data.datasets import open_dataset
from pixcade.data.samples import SkipStats
from pixcade.errors import PixcadeError
from pixcade.pipeline.images import open_image

if TYPE_CHECKING:
    from pixcade.eval.features import FeatureExtractor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# The index `pixcade generate` (and `pixcade drawbench generate`, per model) writes beside
# its images: which files are the samples, and their prompts.
IMAGE_INDEX = "prompts.jsonl"


@dataclass
class GaussianStats:
    mu: np.ndarray  # [D]
    sigma: np.ndarray  # [D, D]
    n: int

    @classmethod
    def from_features(cls, features: np.ndarray) -> "GaussianStats":
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] < 2:
            raise PixcadeError(f"need at least 2 feature vectors, got shape {features.shape}")
        return cls(features.mean(0), np.cov(features, rowvar=False), features.shape[0])


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    When the product of covariances is singular (fewer samples than dimensions), its
    square root is not finite; as is standard, ``eps`` is then added to both diagonals.
    Round-off gives the square root tiny imaginary parts, which are dropped; large ones
    mean the numbers are wrong and raise.
    """
    from scipy import linalg  # here: ~0.9 s to import, and only this needs it

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise PixcadeError(f"feature dimensions differ: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            worst = np.max(np.abs(covmean.imag))
            raise PixcadeError(f"Fréchet distance: matrix square root is complex ({worst:.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    a, b = GaussianStats.from_features(real), GaussianStats.from_features(fake)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = x.shape[0], y.shape[0]
    # Unbiased: the diagonals k(x_i, x_i) are left out of the within-set means.
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kernel_inception_distance(
    real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased MMD^2 over random subsets."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise PixcadeError("KID needs at least 2 images in each set")
    rng = np.random.default_rng(seed)
    values = [
        _mmd2_unbiased(
            real[rng.choice(real.shape[0], size, replace=False)],
            fake[rng.choice(fake.shape[0], size, replace=False)],
        )
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def _index_row(line: str) -> tuple[list[str], str]:
    """(image files, prompt) of one index row; ValueError/KeyError/TypeError if malformed."""
    row = json.loads(line)
    files = [row["image"]] if "image" in row else list(row["images"])
    if not all(isinstance(f, str) for f in files):
        raise TypeError("image names must be strings")
    return files, str(row["prompt"])


def read_image_index(path: str | Path, root: str | Path) -> list[tuple[Path, str]]:
    """(image path, prompt) for every image a JSONL index lists, in order.

    Rows are ``{"image": FILE, "prompt": TEXT}`` (a `pixcade drawbench generate` model
    folder) or ``{"images": [FILE, ...], "prompt": TEXT}`` (a `pixcade generate` output
    folder); FILE is relative to ``root``.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PixcadeError(f"cannot read {path}: {err}") from None
    pairs: list[tuple[Path, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            files, prompt = _index_row(line)
        except (ValueError, KeyError, TypeError):
            raise PixcadeError(f'{path}:{n}: expected {{"image": FILE, "prompt": TEXT}} or '
                               f'{{"images": [FILE, ...], "prompt": TEXT}}') from None
        pairs += [(Path(root) / f, prompt) for f in files]
    if not pairs:
        raise PixcadeError(f"{path} lists no images")
    return pairs


def image_index(folder: str | Path) -> list[tuple[Path, str]] | None:
    """The images a folder's ``prompts.jsonl`` lists (see `read_image_index`), or None when
    it has no such index (a prompts.jsonl of another form is the folder's own business)."""
    path = Path(folder) / IMAGE_INDEX
    if not path.is_file():
        return None
    try:
        return read_image_index(path, folder)
    except PixcadeError:
        return None


def iter_images(
    source: str | Path, skips: SkipStats | None = None
) -> tuple[int | None, Iterator[Image.Image]]:
    """(count if known, RGB images) from a folder (recursive) or dataset shards.

    A folder written by `pixcade generate` is read through its ``prompts.jsonl``: its
    samples are exactly the images listed there, not ``grid.png`` nor the earlier stages'
    images under ``stages/``; a listed image that is missing (an unfinished run) is an
    error. Anything that is not a folder (WebDataset tar shards, a manifest) is opened with
    ``pixcade.data.datasets.open_dataset``; its unreadable images are left out and counted
    in ``skips`` (a corrupt file in a large shard set should cost one image, not the run).
    In a folder every file was put there to be measured, so an unreadable one is an error.
    """
    path = Path(source)
    if path.is_dir():
        indexed = image_index(path)
        if indexed is not None:
            files = list(dict.fromkeys(p for p, _ in indexed))
            missing = [p for p in files if not p.is_file()]
            if missing:
                raise PixcadeError(
                    f"{len(missing)} of {len(files)} images listed in {path / IMAGE_INDEX} are missing, "
                    f"e.g. {missing[0].name} (an unfinished `pixcade generate` run? rerun it to finish)"
                )
        else:
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise PixcadeError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
        return len(files), (open_image(p) for p in files)
    skips = SkipStats() if skips is None else skips
    samples = skips.track(open_dataset(str(source)))
    return None, (sample["image"].convert("RGB") for sample in samples)


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB PIL images of one size -> float [B, 3, H, W] in [-1, 1]."""
    return torch.stack([transforms.to_tensor(im) for im in images])


def _batches(images: Iterable[Image.Image], batch_size: int) -> Iterator[list[Image.Image]]:
    batch: list[Image.Image] = []
    for im in images:
        # Images of a set may differ in size; a batch must not.
        if batch and im.size != batch[0].size:
            yield batch
            batch = []
        batch.append(im)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def extract_features(
    source: str | Path,
    extractor: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 50,
    device: str = "cpu",
    desc: str = "features",
    skips: SkipStats | None = None,
) -> np.ndarray:
    """Run ``extractor`` ([-1, 1] images -> [B, D]) over every readable image of ``source``.

    Pass ``skips`` to learn which dataset images were unreadable and left out.
    """
    total, images = iter_images(source, skips)
    chunks = []
    with tqdm(total=total, desc=desc, unit="img") as bar:
        for batch in _batches(images, batch_size):
            chunks.append(extractor(to_tensor(batch).to(device)).double().cpu().numpy())
            bar.update(len(batch))
    if not chunks:
        raise PixcadeError(f"no images in {source}")
    return np.concatenate(chunks)


def compare_image_sets(
    real: str,
    fake: str,
    extractor: FeatureExtractor,
    *,
    batch_size: int,
    device: str,
    fid: bool,
    kid: bool,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
) -> tuple[dict[str, Any], dict[str, SkipStats]]:
    """FID and/or KID between two image sources (folders, `pixcade generate` folders or
    datasets) in ``extractor``'s feature space: (the result `pixcade eval fid|kid` prints,
    the unreadable images left out of each set)."""
    skips = {"real": SkipStats(), "fake": SkipStats()}
    real_f = extract_features(real, extractor, batch_size, device, desc="real features", skips=skips["real"])
    fake_f = extract_features(fake, extractor, batch_size, device, desc="fake features", skips=skips["fake"])
    result: dict[str, Any] = {
        "features": extractor.name,
        "comparable_to_published": extractor.comparable,
        "note": extractor.note,
        "n_real": int(real_f.shape[0]),
        "n_fake": int(fake_f.shape[0]),
        # Unreadable dataset images left out: the n above are what was measured.
        "skipped_real": skips["real"].count,
        "skipped_fake": skips["fake"].count,
    }
    if fid:
        result["fid"] = fid_from_features(real_f, fake_f)
    if kid:
        mean, std = kernel_inception_distance(real_f, fake_f, kid_subsets, kid_subset_size)
        result.update(kid=mean, kid_std=std)
    return result, skips
