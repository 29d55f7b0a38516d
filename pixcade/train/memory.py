"""A memory model of training: per-GPU bytes for DDP and FSDP at the paper's sizes.

Parameter-sized terms come from the U-Net built on the meta device (no memory): every
parameter's shape, so FSDP's per-rank shard is computed exactly as ``fully_shard`` cuts it
(dim 0 in chunks of ceil(rows / N), rank r taking chunk r; rank 0 holds the most). With
Adam and fp32 master weights, per parameter element: weights 4 B, gradients 4 B, Adam's
two moments 8 B, the EMA 4 B.

Activations are measured: the bytes autograd saves for backward (saved-tensor hooks,
each storage counted once, weights and inputs not counted) in one forward under bf16 autocast at the stage's training
resolution, on a CPU, with the U-Net's channels and head size divided by 8 and by 16 (same
number of heads), at batch 1 and 2. Every saved tensor is linear in the width (or does not
depend on it) and in the batch, so the per-image bytes at full width are read off the line
through the two widths (`activation_bytes_per_image`; a test checks the extrapolation on a
small U-Net against a direct measurement). CPU attention runs in fp32 (pixcade's choice
there), so attention's saved tensors are counted in fp32: on a GPU they are bf16, at most
this.

Extra, beside those: DDP keeps autocast's bf16 copies of the weights during a step (2 B per
element); FSDP holds one unit (the largest layer) gathered in bf16 twice (this unit and the
prefetched next) and its unsharded fp32 gradient before the reduce-scatter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

from pixcade.nn.configs import UNetConfig, get_preset
from pixcade.nn.unet import EfficientUNet
from pixcade.train.fsdp import SHARD_UNITS

GB = 1e9  # tables are in GB (10**9 bytes), as GPU memory is sold
BYTES_WEIGHTS, BYTES_GRADS, BYTES_ADAM, BYTES_EMA = 4, 4, 8, 4
TEXT_TOKENS = 128  # T5-XXL embeddings at pixcade's default max_length


@dataclass(frozen=True)
class PaperStage:
    """A stage as the paper trains it: preset, training resolution (crop), global batch."""

    name: str
    preset: str
    resolution: int
    batch: int


# Imagen trains every stage at batch 2048 (pixcade's TrainConfig default); the 256 -> 1024
# model trains on 256 x 256 crops (it has no self-attention, so crops are exact).
PAPER_STAGES = (
    PaperStage("base 64 (2B)", "base64", 64, 2048),
    PaperStage("SR 64->256 (600M)", "sr256", 256, 2048),
    PaperStage("SR 256->1024 (400M)", "sr1024", 256, 2048),
)


def meta_unet(config: UNetConfig) -> EfficientUNet:
    with torch.device("meta"):
        return EfficientUNet(config)


def shard_rows(rows: int, world: int, rank: int) -> int:
    """Rows of a dim-0 size ``rows`` that rank ``rank`` of ``world`` holds under fully_shard."""
    chunk = math.ceil(rows / world)
    return max(0, min(rows, (rank + 1) * chunk) - rank * chunk)


def shard_elements(shapes: Iterable[torch.Size], world: int, rank: int = 0) -> int:
    """Parameter elements on one rank when every tensor is cut along dim 0."""
    total = 0
    for shape in shapes:
        rows = shape[0] if len(shape) else 1
        total += shard_rows(rows, world, rank) * (math.prod(shape) // rows if rows else 0)
    return total


def largest_unit_elements(net: torch.nn.Module) -> int:
    """Parameter elements of the biggest FSDP unit (see `pixcade.train.fsdp.SHARD_UNITS`)."""
    return max(sum(p.numel() for p in m.parameters()) for m in net.modules() if isinstance(m, SHARD_UNITS))


def narrowed(config: UNetConfig, divisor: int) -> UNetConfig:
    """``config`` with channels and head size divided by ``divisor`` (same number of heads)."""
    channels = config.channels // divisor
    return UNetConfig.from_dict({**config.to_dict(), "channels": channels, "head_dim": config.head_dim // divisor,
                                 "norm_groups": math.gcd(config.norm_groups, channels),
                                 "gradient_checkpointing": False})


def measure_activation_bytes(config: UNetConfig, resolution: int, *, batch: int = 1,
                             text_tokens: int = TEXT_TOKENS, bf16: bool = True) -> int:
    """Bytes saved for backward in one training forward (CPU, real tensors, seeded inputs)."""
    torch.manual_seed(0)
    net = EfficientUNet(config).train()
    x = torch.randn(batch, config.in_channels, resolution, resolution)
    t = torch.rand(batch)
    emb = torch.randn(batch, text_tokens, config.text_dim)
    mask = torch.ones(batch, text_tokens, dtype=torch.bool)
    kwargs = {"lowres": torch.randn_like(x), "aug_t": torch.rand(batch)} if config.lowres_cond else {}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not _is_weight_copy(tensor):  # autocast's bf16 copies of weights count under "extra"
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x, t, emb, mask, **kwargs)
    del out
    skip = {v.untyped_storage().data_ptr() for v in (*net.parameters(), x, t, emb, mask, *kwargs.values())}
    return sum(n for ptr, n in seen.items() if ptr not in skip)


def activation_bytes_per_image(config: UNetConfig, resolution: int, divisors: tuple[int, int] = (8, 16),
                               text_tokens: int = TEXT_TOKENS) -> float:
    """Full-width activation bytes per image, from measurements at two narrow widths.

    Per image = bytes at batch 2 minus bytes at batch 1 (what does not grow with the batch
    drops out); then a line through the two widths, read at full width (fraction 1).
    """
    per_image = []
    for d in divisors:
        cfg = narrowed(config, d)
        per_image.append(measure_activation_bytes(cfg, resolution, batch=2, text_tokens=text_tokens)
                         - measure_activation_bytes(cfg, resolution, batch=1, text_tokens=text_tokens))
    (f1, f2), (b1, b2) = (1 / d for d in divisors), per_image
    slope = (b1 - b2) / (f1 - f2)
    return b1 + slope * (1 - f1)


def _is_weight_copy(tensor: torch.Tensor) -> bool:
    fn = tensor.grad_fn
    return (fn is not None and fn.name() == "ToCopyBackward0"
            and any(f is not None and f.name() == "torch::autograd::AccumulateGrad" for f, _ in fn.next_functions))


@dataclass(frozen=True)
class MemoryRow:
    stage: str
    mode: str  # "DDP" or "FSDP"
    gpus: int
    batch_per_gpu: int
    parameters: int
    weights: float  # bytes per GPU, each
    grads: float
    adam: float
    ema: float
    activations: float
    extra: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.adam + self.ema + self.activations + self.extra


def memory_rows(stage: PaperStage, activation_bytes_per_image: float,
                gpus: Iterable[int] = (1, 8, 64)) -> list[MemoryRow]:
    """DDP and FSDP rows for ``stage`` at each GPU count, from meta-device shapes and the
    measured full-width activation bytes of one image."""
    net = meta_unet(get_preset(stage.preset))
    shapes = [p.shape for p in net.parameters()]
    count = sum(math.prod(s) for s in shapes)
    unit = largest_unit_elements(net)
    rows = []
    for n in gpus:
        per_gpu = stage.batch // n
        act = activation_bytes_per_image * per_gpu
        rows.append(MemoryRow(stage.name, "DDP", n, per_gpu, count, BYTES_WEIGHTS * count, BYTES_GRADS * count,
                              BYTES_ADAM * count, BYTES_EMA * count, act, 2 * count))
        mine = shard_elements(shapes, n, 0)
        rows.append(MemoryRow(stage.name, "FSDP", n, per_gpu, count, BYTES_WEIGHTS * mine, BYTES_GRADS * mine,
                              BYTES_ADAM * mine, BYTES_EMA * mine, act, (2 * 2 + 4) * unit))
    return rows


RESERVE_GB = 4.0  # left for the CUDA context, allocator slack and kernels' workspace


def max_micro_batch(row: MemoryRow, capacity_gb: float, activation_bytes_per_image: float) -> int:
    """Largest per-GPU micro-batch that fits beside the row's state (0: not even one image);
    the rest of the batch per GPU then comes from gradient accumulation."""
    state = row.total - row.activations
    room = (capacity_gb - RESERVE_GB) * GB - state
    return max(0, min(row.batch_per_gpu, int(room // activation_bytes_per_image)))


def markdown_table(rows: Iterable[MemoryRow], activation_bytes: dict[str, float]) -> str:
    """``activation_bytes``: per-image bytes by stage name."""
    head = ("| stage | mode | GPUs | batch/GPU | weights | grads | Adam | EMA | extra | activations | total "
            "| micro-batch on 80 GB | on 141 GB |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        cells = [r.stage, r.mode, str(r.gpus), str(r.batch_per_gpu)]
        cells += [f"{v / GB:.2f}" for v in (r.weights, r.grads, r.adam, r.ema, r.extra, r.activations, r.total)]
        cells += [str(max_micro_batch(r, c, activation_bytes[r.stage])) for c in (80, 141)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
