"""The shape shared by pixcade's small judges (shapes features, emoji classifier): a stack
of convolutions, global average pooling and a projection to the feature vector the heads,
FID/KID and near-copy checks read."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PooledConvNet(nn.Module):
    """Subclasses set ``self.config`` (with ``resolution``), ``self.body`` and ``self.project``.

    Images of another size are resized to the judge's resolution first, so a judge accepts
    any stage's output."""

    config: object
    body: nn.Module
    project: nn.Module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        r = self.config.resolution
        if images.shape[-2:] != (r, r):
            images = F.interpolate(images, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        return F.silu(self.project(self.body(images).mean(dim=(2, 3))))
