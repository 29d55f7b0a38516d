"""Judging images of the emoji domain against its held-out rows (docs/emoji-spec.md).

- `ceiling`: the classifier's style, family and joint (both right) accuracy on the real
  held-out images: what generated images of the same prompts are reported against.
- `judge_generated`: the same accuracies for generated images of held-out prompts, beside
  the ceiling on the same rows; Fréchet distance and KID in the classifier's features
  against the real images of those rows.
- `copy_check` (judge-independent): near-copies, generated images whose nearest
  training image (pixels, 64 px) is closer than `copy_psnr` dB and of another style (the
  model pasted a concept from a style where it saw it). The same check on the real
  held-out images gives the rate a faithful drawing trips it by chance.
- `judge_sr`: PSNR and SSIM of a super-resolution stage given the true 64 px image against
  the true 256 px image, beside bicubic upsampling, on held-out rows with 256 px sources.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from pixcade.data.emoji.spec import BASE_SIZE, SPLITS
from pixcade.errors import PixcadeError
from pixcade.eval.emoji_classifier import EmojiClassifier, LabelledImages, image_pixels, predict
from pixcade.eval.fid import fid_from_features, kernel_inception_distance
from pixcade.eval.sr_psnr import bicubic, psnr


def accuracy(pred: dict[str, Any], styles: Sequence[str], families: Sequence[str]) -> dict[str, Any]:
    s = np.array([a == b for a, b in zip(pred["styles"], styles)])
    f = np.array([a == b for a, b in zip(pred["families"], families)])
    n = len(styles)
    return {"n": n, "style": float(s.mean()) if n else None, "family": float(f.mean()) if n else None,
            "joint": float((s & f).mean()) if n else None}


def by_split(pred: dict[str, Any], rows: LabelledImages, index: Sequence[int]) -> dict[str, Any]:
    """Accuracies over `index` (rows of `rows`), overall and per held-out split."""
    out = {}
    for split in ("all",) + SPLITS:
        idx = [i for i in range(len(index)) if split == "all" or rows.extra[index[i]].get("split") == split]
        sub = {k: [pred[k][i] for i in idx] for k in ("styles", "families")}
        out[split] = accuracy(sub, [rows.styles[index[i]] for i in idx], [rows.families[index[i]] for i in idx])
    return out


def ceiling(net: EmojiClassifier, held_out: LabelledImages) -> dict[str, Any]:
    return by_split(predict(net, held_out.pixels), held_out, range(len(held_out.styles)))


def nearest(queries: torch.Tensor, train: torch.Tensor, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest training image, its PSNR in dB) for each uint8 query image."""
    q = queries.reshape(queries.shape[0], -1).float()
    best_d = torch.full((q.shape[0],), float("inf"))
    best_i = torch.zeros(q.shape[0], dtype=torch.long)
    qq = (q * q).sum(1, keepdim=True)
    for start in range(0, train.shape[0], chunk):
        t = train[start : start + chunk].reshape(-1, q.shape[1]).float()
        d = qq + (t * t).sum(1)[None] - 2 * q @ t.T
        d_min, i_min = d.min(1)
        better = d_min < best_d
        best_d[better], best_i[better] = d_min[better], i_min[better] + start
    mse = (best_d.clamp_min(0) / q.shape[1]).clamp_min(1.0 / q.shape[1]).double().numpy()
    return best_i.numpy(), 10 * np.log10(255.0**2 / mse)


def near_copies(queries: torch.Tensor, styles: Sequence[str], train: LabelledImages, copy_psnr: float) -> dict[str, Any]:
    idx, db = nearest(queries, train.pixels)
    other = [train.styles[j] != s for j, s in zip(idx, styles)]
    close = db >= copy_psnr
    return {"threshold_db": copy_psnr, "n": len(styles),
            "of_another_style": int(sum(c and o for c, o in zip(close, other))),
            "of_the_same_style": int(sum(c and not o for c, o in zip(close, other))),
            "median_nearest_db": float(np.median(db)) if len(db) else None}


def distances(real: np.ndarray, fake: np.ndarray, kid_subset_size: int = 1000, seed: int = 0) -> dict[str, Any]:
    kid, kid_std = kernel_inception_distance(real, fake, subsets=100, subset_size=kid_subset_size, seed=seed)
    return {"fd": fid_from_features(real, fake), "kid": kid, "kid_std": kid_std}


def to_pixels(images: Sequence[Image.Image], resolution: int) -> torch.Tensor:
    return torch.stack([image_pixels(im, resolution) for im in images])


def held_out_index(held_out: LabelledImages, generated: Sequence[tuple[Image.Image, str]]) -> list[int]:
    """The held-out row of each generated (image, prompt); every prompt must be one."""
    by_prompt = {c: i for i, c in enumerate(held_out.captions)}
    unknown = sorted({p for _, p in generated if p not in by_prompt})
    if unknown:
        raise PixcadeError(f"{len(unknown)} prompt(s) are not held-out emoji prompts, e.g. {unknown[0]!r}")
    if len(generated) < 2:
        raise PixcadeError("need at least 2 generated images")
    return [by_prompt[p] for _, p in generated]


def judge_generated(
    net: EmojiClassifier, held_out: LabelledImages, generated: Sequence[tuple[Image.Image, str]],
) -> dict[str, Any]:
    """One judge's view of generated (image, prompt) pairs of held-out prompts: accuracies
    beside the ceiling on the same rows, FD and KID against those rows' real images, and what
    it read in each image (``per_image``, in the order given: which concepts a model draws)."""
    index = held_out_index(held_out, generated)
    pred = predict(net, to_pixels([im for im, _ in generated], net.config.resolution))
    rows = sorted(set(index))
    real = predict(net, held_out.pixels[rows])
    real_acc = by_split(real, held_out, rows)
    gen_acc = by_split(pred, held_out, index)
    per_image = [{"prompt": prompt, "style": style, "family": family,
                  "style_right": style == held_out.styles[i], "family_right": family == held_out.families[i]}
                 for (_, prompt), i, style, family in zip(generated, index, pred["styles"], pred["families"])]
    return {
        "images": len(generated), "prompts": len(rows),
        "accuracy": {split: {"generated": gen_acc[split], "ceiling": real_acc[split]} for split in gen_acc},
        "distance": distances(real["features"], pred["features"]),
        "per_image": per_image,
    }


def copy_check(held_out: LabelledImages, train: LabelledImages, generated: Sequence[tuple[Image.Image, str]],
               copy_psnr: float) -> dict[str, Any]:
    """Near-copies among the generated images, and among the real images of their rows
    (the rate at which a faithful drawing trips the check); judge-independent (pixels)."""
    index = held_out_index(held_out, generated)
    rows = sorted(set(index))
    pixels = to_pixels([im for im, _ in generated], train.pixels.shape[-1])
    return {"generated": near_copies(pixels, [held_out.styles[i] for i in index], train, copy_psnr),
            "real_held_out": near_copies(held_out.pixels[rows], [held_out.styles[i] for i in rows], train, copy_psnr)}


def judge_generated_sets(
    judges: dict[str, tuple[EmojiClassifier, dict[str, Any]]],
    held_out: LabelledImages,
    train: LabelledImages,
    sets: dict[str, list[tuple[Image.Image, str]]],
    copy_psnr: float,
) -> dict[str, Any]:
    """`judge_generated` for every image set with every judge ({name: (net, its weights'
    info)}), each judge's ranking of the sets by joint accuracy and by FD, whether the
    judges agree on them, and each set's `copy_check`."""
    reports: dict[str, dict[str, Any]] = {}
    for name, (net, info) in judges.items():
        reports[name] = {"sha256": info["digest"], "trained_by": info.get("command"), "seed": info.get("seed"),
                         "models": {f: judge_generated(net, held_out, s) for f, s in sets.items()}}
    rankings = {w: {"joint": sorted(sets, key=lambda f: -r["models"][f]["accuracy"]["all"]["generated"]["joint"]),
                    "fd": sorted(sets, key=lambda f: r["models"][f]["distance"]["fd"])}
                for w, r in reports.items()}
    agree = {k: len({tuple(r[k]) for r in rankings.values()}) == 1 for k in ("joint", "fd")}
    copies = {f: copy_check(held_out, train, s, copy_psnr) for f, s in sets.items()}
    return {"judges": reports, "rankings": rankings, "rankings_agree": agree, "near_copies": copies}


def ssim(a: Image.Image, b: Image.Image) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) over
    the RGB channels, on 0-255 values; windows wholly inside the image."""
    from scipy.ndimage import gaussian_filter  # here: ~0.4 s to import, and only SSIM needs it

    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    if x.shape != y.shape:
        raise PixcadeError(f"SSIM needs images of one size, got {x.shape[:2]} and {y.shape[:2]}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(z: np.ndarray) -> np.ndarray:
        return gaussian_filter(z, sigma=(1.5, 1.5, 0), truncate=3.5, mode="reflect")[5:-5, 5:-5]

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def judge_sr(
    upsample: Callable[[list[Image.Image], list[str]], list[Image.Image]], truths: Sequence[Image.Image],
    captions: Sequence[str], splits: Sequence[str],
) -> tuple[dict[str, Any], dict[str, list[Image.Image]]]:
    """`upsample(lowres images, captions)` (the SR stage) against bicubic, given the true
    64 px images (each 256 px truth downsampled, as in training)."""
    if not truths:
        raise PixcadeError("no held-out 256 px images to judge super-resolution on")
    lows = [bicubic(t, BASE_SIZE) for t in truths]
    outs = upsample(lows, list(captions))
    size = truths[0].size[0]
    bics = [bicubic(im, size) for im in lows]
    rows = [{"caption": c, "split": sp, "psnr_sr": psnr(o, t), "psnr_bicubic": psnr(b, t),
             "ssim_sr": ssim(o, t), "ssim_bicubic": ssim(b, t)}
            for c, sp, o, b, t in zip(captions, splits, outs, bics, truths)]

    def mean(split: str | None) -> dict[str, Any]:
        sel = [r for r in rows if split is None or r["split"] == split]
        m = {k: float(np.mean([r[k] for r in sel])) if sel else None
             for k in ("psnr_sr", "psnr_bicubic", "ssim_sr", "ssim_bicubic")}
        gain = None if not sel else m["psnr_sr"] - m["psnr_bicubic"]
        return {"n": len(sel), **m, "psnr_gain_db": gain}

    report = {"all": mean(None), **{s: mean(s) for s in SPLITS}, "results": rows}
    return report, {"lowres": lows, "bicubic": bics, "sr": outs, "truth": list(truths)}
