"""A feature extractor for FID/KID on the shapes domain, that pixcade trains itself.

Inception features know nothing of flat coloured shapes on a grey canvas, and their
weights may not be at hand. This small CNN learns the domain: it is trained on rendered
scenes (``pixcade.data.shapes``, all colour-shape pairs, held-out ones included) to say
which colour-shape pairs an image contains (40 independent yes/no outputs) and how many
shapes it holds, so its penultimate layer encodes colours, kinds and their binding. Its
FID is useful for comparing models on this domain, and NOT comparable to published FID.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from pixcade.data.render import render
from pixcade.data.shapes import ALL_PAIRS, sample_scene
from pixcade.data.transforms import to_tensor
from pixcade.errors import PixcadeError
from pixcade.eval.judge_net import PooledConvNet
from pixcade.io import save_tensors

MAX_SHAPES = 4


@dataclass
class ShapesFeaturesConfig:
    resolution: int = 64
    width: int = 32
    feature_dim: int = 128


class ShapesFeatureNet(PooledConvNet):
    """Images [B, 3, H, W] in [-1, 1] -> features [B, feature_dim] (``forward``)."""

    def __init__(self, config: ShapesFeaturesConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        chans = [3, w, 2 * w, 4 * w, 4 * w]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.project = nn.Linear(4 * w, config.feature_dim)
        self.pair_head = nn.Linear(config.feature_dim, len(ALL_PAIRS))
        self.count_head = nn.Linear(config.feature_dim, MAX_SHAPES + 1)

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pair_head(features), self.count_head(features)


def _batch(rng: np.random.Generator, n: int, resolution: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    index = {p: i for i, p in enumerate(ALL_PAIRS)}
    images, pairs, counts = [], torch.zeros(n, len(index)), torch.zeros(n, dtype=torch.long)
    for b in range(n):
        scene = sample_scene(rng, exclude_pairs=())
        images.append(to_tensor(render(scene, resolution)))
        for sh in scene.shapes:
            pairs[b, index[sh.pair]] = 1
        counts[b] = len(scene.shapes)
    return torch.stack(images), pairs, counts


def train_shapes_features(out: str | Path, steps: int = 2000, resolution: int = 64, seed: int = 0,
                          batch_size: int = 32, lr: float = 2e-3) -> dict:
    """Train on freshly rendered scenes and save ``out`` (.safetensors, config in metadata)."""
    if steps < 1 or resolution < 16:
        raise PixcadeError("train-shapes-features needs steps >= 1 and resolution >= 16")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = ShapesFeaturesConfig(resolution=resolution)
    net = ShapesFeatureNet(config)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in tqdm(range(steps), desc="train shapes features", unit="step"):
        x, pairs, counts = _batch(rng, batch_size, resolution)
        pair_logits, count_logits = net.heads(net(x))
        loss = F.binary_cross_entropy_with_logits(pair_logits, pairs) + F.cross_entropy(count_logits, counts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    # Held-out check on fresh scenes: how often every pair is called right.
    net.eval()
    with torch.no_grad():
        x, pairs, counts = _batch(np.random.default_rng(seed + 1), 128, resolution)
        pair_logits, count_logits = net.heads(net(x))
        exact = ((pair_logits > 0).float() == pairs).all(dim=1).float().mean().item()
        count_acc = (count_logits.argmax(1) == counts).float().mean().item()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(out, net.state_dict(), metadata={"pixcade": "shapes-features", "config": json.dumps(asdict(config))})
    k = max(1, min(50, steps // 10))
    return {"out": str(out), "steps": steps, "first_loss": float(np.mean(losses[:k])),
            "last_loss": float(np.mean(losses[-k:])), "val_pairs_exact": exact, "val_count_accuracy": count_acc}


def load_shapes_features(path: str | Path, device: str = "cpu") -> ShapesFeatureNet:
    path = Path(path)
    if not path.is_file():
        raise PixcadeError(f"shapes feature weights not found: {path} (make them with "
                           "`pixcade eval train-shapes-features --out FILE`)")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - safetensors' own error type: not a safetensors file
        meta = {}
    if meta.get("pixcade") != "shapes-features":
        raise PixcadeError(f"{path} is not a pixcade shapes feature network")
    net = ShapesFeatureNet(ShapesFeaturesConfig(**json.loads(meta["config"])))
    net.load_state_dict(load_file(str(path)))
    return net.to(device).eval()
