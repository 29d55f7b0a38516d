"""Preview grids: samples of the EMA weights for fixed conditioning, every N steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pixcade.nn.unet import EfficientUNet
from pixcade.pipeline.images import make_grid, to_pil
from pixcade.stage import Stage


class Previewer:
    """Holds the fixed conditioning (encoded once) and a spare network for the EMA weights.

    Sampling uses its own seeded generator, so previews are comparable across steps and
    never disturb the training's random state.
    """

    def __init__(
        self,
        stage: Stage,
        device: torch.device,
        text_emb: torch.Tensor,
        text_mask: torch.Tensor,
        lowres: torch.Tensor | None,
        out_dir: Path,
        *,
        steps: int | None,
        seed: int,
    ):
        # Its own whole network (the trained one may be sharded or wrapped); building it
        # must not move the training's random state.
        with torch.random.fork_rng(devices=[]):
            self.net = EfficientUNet(stage.config.unet).to(device).eval().requires_grad_(False)
        self.stage = Stage(stage.config, net=self.net)
        self.text_emb, self.text_mask, self.lowres = text_emb, text_mask, lowres
        self.out_dir = out_dir
        self.steps = steps
        self.seed = seed

    @torch.no_grad()
    def render(self, weights: dict[str, torch.Tensor], step: int) -> tuple[Path, torch.Tensor]:
        """A grid from ``weights`` (the EMA's, whole)."""
        self.net.load_state_dict(weights)
        device = next(self.net.parameters()).device
        g = torch.Generator(device=device).manual_seed(self.seed)
        lowres = self.lowres.to(device) if self.lowres is not None else None
        images = self.stage.sample(
            self.text_emb.to(device), self.text_mask.to(device), lowres, steps=self.steps, generator=g
        )
        rows = [images]
        if lowres is not None:  # show what the stage was given above what it made
            up = torch.nn.functional.interpolate(lowres, size=images.shape[-2:], mode="nearest")
            rows = [up, images]
        grid = make_grid([to_pil(row) for row in rows])
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"step-{step:08d}.png"
        grid.save(path)
        chw = torch.from_numpy(np.array(grid)).permute(2, 0, 1)
        return path, chw
