"""Sampling a cascade: `Cascade` (saved pipelines, `generate`) and `pixcade generate`."""

from pixcade.pipeline.cascade import Cascade, assemble

__all__ = ["Cascade", "assemble"]
