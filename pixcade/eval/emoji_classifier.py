"""The emoji domain's judge: a small CNN trained from scratch on the training rows only.

No CLIP or Inception weights exist offline, so the domain brings its own classifier. It
reads 64 px images and has two heads, the style (6 classes) and the concept family (every
family of the training rows; docs/emoji-spec.md), over one pooled feature vector, which is
also the feature space of the evaluator's Fréchet distance and KID.

Augmentations keep colour, which carries meaning here (skin tones, flags, hearts): small
translations and zooms on a white canvas, never a hue change, and never a mirror image
(emoji "facing right" are distinct concepts). Training is deterministic on CPU for a given
seed and thread count.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from pixcade.data.emoji.manifest import manifest_rows
from pixcade.data.samples import DECODE_ERRORS
from pixcade.errors import PixcadeError
from pixcade.eval.judge_net import PooledConvNet
from pixcade.io import make_dirs, save_tensors, sha256_file
from pixcade.pipeline.shipped import weights_dir
from pixcade.train.checkpoint import intact_checkpoints, load_checkpoint, save_checkpoint

KIND = "emoji-classifier"  # the safetensors metadata tag
# The two fixed judges every emoji number is read with (seeds 0 and 1, `scripts/emoji_runs.sh
# judges`), shipped so that a new machine judges with the same weights instead of retraining
# them (1.75 h of two cores, and other weights on another CPU); each beside its training report.
SHIPPED_JUDGES = "emoji-judges"


@dataclass
class ClassifierConfig:
    resolution: int = 64
    width: int = 16
    feature_dim: int = 256


@dataclass
class LabelledImages:
    """Unique images of a manifest with their labels (uint8 [N, 3, R, R], lists of N)."""

    pixels: torch.Tensor
    styles: list[str]
    families: list[str]
    keys: list[str]
    captions: list[str]  # the first caption row of each image
    extra: list[dict[str, Any]]  # the first manifest row of each image


def read_manifest(manifest: str | Path, resolution: int = 64) -> LabelledImages:
    """The unique images of an emoji manifest (`pixcade data emoji`), resized if needed."""
    manifest = Path(manifest)
    first: dict[str, dict[str, Any]] = {}
    for row in manifest_rows(manifest):
        first.setdefault(row["image"], row)
    if not first:
        raise PixcadeError(f"{manifest} lists no images")
    pixels = []
    for rel in first:
        try:
            pixels.append(image_pixels(Image.open(manifest.parent / rel), resolution))
        except DECODE_ERRORS as err:
            raise PixcadeError(f"cannot read {manifest.parent / rel}: {err}") from None
    rows = list(first.values())
    return LabelledImages(torch.stack(pixels), [r["style"] for r in rows], [r["family"] for r in rows],
                          [r["key"] for r in rows], [r["caption"] for r in rows], rows)


def image_pixels(image: Image.Image, resolution: int) -> torch.Tensor:
    """An image as the judge reads it: RGB, bicubic-resized to ``resolution`` if need be,
    uint8 [3, resolution, resolution]."""
    image = image.convert("RGB")
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float in [-1, 1] (as `pixcade.data.transforms.to_tensor`)."""
    return pixels.float() / 127.5 - 1


class EmojiClassifier(PooledConvNet):
    """Images [B, 3, H, W] in [-1, 1] -> features [B, feature_dim] (`forward`); `heads`
    turns features into (style logits, family logits)."""

    def __init__(self, config: ClassifierConfig, styles: Sequence[str], families: Sequence[str]) -> None:
        super().__init__()
        self.config, self.styles, self.families = config, list(styles), list(families)
        w = config.width
        chans = [3, w, 2 * w, 4 * w, 8 * w]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:])):
            # Groups of 16 channels: a group of one or two channels would normalise away how
            # strongly a colour is present, and colour is half of what the judge must see.
            groups = max(1, cout // 16)
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(groups, cout),
                       nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.project = nn.Linear(8 * w, config.feature_dim)
        self.style_head = nn.Linear(config.feature_dim, len(self.styles))
        self.family_head = nn.Linear(config.feature_dim, len(self.families))

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.style_head(features), self.family_head(features)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random zoom (0.85-1.15) and shift (up to 1/8 of the side) on white; colours kept."""
    b = x.shape[0]
    scale = 0.85 + 0.3 * torch.rand(b, generator=generator)
    shift = (torch.rand(b, 2, generator=generator) - 0.5) * 0.25
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Sample x - 1 (white = 0) with zero padding, so what comes in from outside is white.
    return F.grid_sample(x - 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1


def one_cycle_lr(step: int, steps: int, lr: float) -> float:
    """The learning rate of 0-based ``step`` of ``steps``: linear warm-up from lr / 25 over
    the first tenth, then cosine down to lr / 1e4 (Smith's one-cycle, without its momentum
    cycle). A pure function of the step, so a resumed run needs no scheduler state."""
    warm = max(1, steps // 10)
    if step < warm:
        return lr * (1 / 25 + (1 - 1 / 25) * step / warm)
    floor, frac = lr / 1e4, (step - warm) / max(1, steps - warm)
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * frac))


def _run_key(steps: int, seed: int, batch_size: int, lr: float, config: ClassifierConfig, n: int,
             styles: list[str], families: list[str]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the run's settings and its training rows."""
    labels = hashlib.sha256(json.dumps([styles, families]).encode()).hexdigest()
    return {"steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr, "config": asdict(config),
            "images": n, "labels_sha256": labels}


def _resume(directory: Path, key: dict[str, Any], net: nn.Module, opt: torch.optim.Optimizer,
            generator: torch.Generator) -> dict[str, Any] | None:
    """Load the newest intact checkpoint in ``directory`` into net, opt and generator; its
    state, or None when there is none. One of another run is refused, naming the difference."""
    found = intact_checkpoints(directory)
    if not found:
        return None
    ckpt = load_checkpoint(found[0])
    theirs = ckpt.state.get("run", {})
    if theirs != key:
        diff = sorted(k for k in key if theirs.get(k) != key[k])
        raise PixcadeError(f"the checkpoints in {directory} are of another judge run (differs in: {', '.join(diff)}); "
                           "use another --checkpoints folder")
    net.load_state_dict(ckpt.model)
    opt.load_state_dict(ckpt.optimizer)
    generator.set_state(torch.tensor(ckpt.state["generator"], dtype=torch.uint8))
    return {**ckpt.state, "step": ckpt.step}


def train_classifier(
    data: LabelledImages, *, steps: int, seed: int = 0, batch_size: int = 64, lr: float = 2e-3,
    config: ClassifierConfig | None = None, progress: bool = True,
    checkpoints: str | Path | None = None, checkpoint_every: int = 250,
) -> tuple[EmojiClassifier, dict[str, Any]]:
    """Trains on `data` (the training rows only); returns the network (eval mode) and a log.

    With ``checkpoints`` (a folder) the run saves its whole state there every
    ``checkpoint_every`` steps (the newest two kept) and first resumes from the newest one:
    a killed run continues where it was, and ends with the weights an unbroken run makes.
    """
    if steps < 1 or batch_size < 1 or checkpoint_every < 1:
        raise PixcadeError("the emoji classifier needs steps, batch size and checkpoint interval >= 1")

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    config = config or ClassifierConfig(resolution=data.pixels.shape[-1])
    styles, families = sorted(set(data.styles)), sorted(set(data.families))
    net = EmojiClassifier(config, styles, families)
    y_style = torch.tensor([styles.index(s) for s in data.styles])
    family_index = {f: i for i, f in enumerate(families)}
    y_family = torch.tensor([family_index[f] for f in data.families])
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    n = data.pixels.shape[0]
    key = _run_key(steps, seed, batch_size, lr, config, n, styles, families)
    order = torch.randperm(n, generator=generator)
    done, at, losses, seconds = 0, 0, [], 0.0
    folder = make_dirs(checkpoints) if checkpoints is not None else None  # a file in the way fails now, not at step 250
    state = _resume(folder, key, net, opt, generator) if folder is not None else None
    if state is not None:
        done, at, losses, seconds = state["step"], state["at"], state["losses"], state["seconds"]
        order = torch.tensor(state["order"], dtype=torch.long)
    start = time.perf_counter()

    def save(step: int) -> None:
        save_checkpoint(folder, step, model=net.state_dict(), ema={}, optimizer=opt.state_dict(), keep=2, state={
            "run": key, "at": at, "order": order.tolist(), "losses": losses,
            "generator": generator.get_state().tolist(), "seconds": seconds + time.perf_counter() - start})

    net.train()
    for step in tqdm(range(done, steps), desc="emoji classifier", unit="step", disable=not progress,
                     initial=done, total=steps):
        if at + batch_size > n:
            order, at = torch.randperm(n, generator=generator), 0
        idx = order[at : at + batch_size]
        at += batch_size
        x = augment(to_unit(data.pixels[idx]), generator)
        style_logits, family_logits = net.heads(net(x))
        loss = F.cross_entropy(style_logits, y_style[idx]) + F.cross_entropy(family_logits, y_family[idx])
        for group in opt.param_groups:
            group["lr"] = one_cycle_lr(step, steps, lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if folder is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
            save(step + 1)
    net.eval()
    k = max(1, min(50, steps // 10))
    log = {"steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr, "images": n,
           "styles": len(styles), "families": len(families), "width": config.width,
           "seconds": round(seconds + time.perf_counter() - start, 1),
           "first_loss": float(np.mean(losses[:k])), "last_loss": float(np.mean(losses[-k:]))}
    return net, log


@torch.no_grad()
def predict(net: EmojiClassifier, pixels: torch.Tensor, batch_size: int = 256) -> dict[str, Any]:
    """Features and predicted labels of uint8 images [N, 3, H, W]."""
    feats, styles, families = [], [], []
    for i in range(0, pixels.shape[0], batch_size):
        f = net(to_unit(pixels[i : i + batch_size]))
        s, fam = net.heads(f)
        feats.append(f)
        styles += [net.styles[j] for j in s.argmax(1).tolist()]
        families += [net.families[j] for j in fam.argmax(1).tolist()]
    return {"features": torch.cat(feats).double().numpy(), "styles": styles, "families": families}


def save_classifier(path: str | Path, net: EmojiClassifier, info: dict[str, Any]) -> str:
    """Writes the weights (safetensors; labels, config and `info` in the metadata); returns
    the file's sha256, the digest a report cites."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, net.state_dict(), metadata={
        "pixcade": KIND, "config": json.dumps(asdict(net.config)), "styles": json.dumps(net.styles),
        "families": json.dumps(net.families), "info": json.dumps(info)})
    return sha256_file(path)


def shipped_judges() -> list[Path]:
    """The shipped judges' weights files (pixcade/weights/emoji-judges), in seed order."""
    folder = weights_dir() / SHIPPED_JUDGES
    found = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not found:
        raise PixcadeError(f"no shipped emoji judges in {folder}; pass --classifier WEIGHTS")
    return found


def load_judges(paths: Sequence[str | Path] | None) -> dict[str, tuple[EmojiClassifier, dict[str, Any]]]:
    """{path: (network, info)} for each judge given, or for the shipped ones when none is."""
    return {str(path): load_classifier(path) for path in paths or shipped_judges()}


def load_classifier(path: str | Path) -> tuple[EmojiClassifier, dict[str, Any]]:
    """(network in eval mode, its training info plus `digest`)."""

    path = Path(path)
    if not path.is_file():
        raise PixcadeError(f"emoji classifier not found: {path} (train one with `pixcade eval emoji train`)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - safetensors' own error type: not a safetensors file
        meta = {}
    if meta.get("pixcade") != KIND:
        raise PixcadeError(f"{path} is not a pixcade emoji classifier")
    net = EmojiClassifier(ClassifierConfig(**json.loads(meta["config"])), json.loads(meta["styles"]),
                          json.loads(meta["families"]))
    net.load_state_dict(load_file(str(path)))
    return net.eval(), {**json.loads(meta["info"]), "digest": sha256_file(path)}
