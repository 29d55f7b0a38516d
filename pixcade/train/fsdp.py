"""Fully sharded data parallelism for the U-Net: PyTorch's FSDP2 (``fully_shard``).

Every rank holds 1/N of each parameter, of its gradient and of the optimizer state (dim-0
chunks, as DTensors); a unit's full weights exist only while it runs. Units are the layers
that carry weight: each ResNet block, each attention layer, each text block, and the rest
(embeddings, input/output convolutions) as the root unit. A unit is gathered for its
forward and again for its backward, then freed, so at any moment one unit's full weights
(the 2B base's biggest ResNet block: ~75M parameters) sit beside the shards.

Precision: the master weights stay fp32 (what the optimizer updates, what checkpoints
hold); with ``bf16`` they are gathered as bf16 for compute on GPUs and gradients are
reduced in fp32. Inputs are not cast by FSDP: the trainer's bf16 autocast decides per op (so time
embeddings are computed in fp32, as on one process; bf16 cannot tell t = 0.501 from 0.502).

Gradient checkpointing per ResNet block is the composable ``checkpoint`` API, which keeps
parameter names unchanged, so checkpoints do not depend on it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed._composable import checkpoint as checkpoint_module
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from pixcade.nn.attention import CrossAttention, SelfAttention, TextBlock
from pixcade.nn.layers import ResBlock

# The layers that become FSDP units (besides the root).
SHARD_UNITS = (ResBlock, SelfAttention, CrossAttention, TextBlock)


def device_mesh(device: torch.device, world_size: int) -> DeviceMesh:
    """The 1-D mesh of all ranks (the process group must exist)."""
    return init_device_mesh(device.type, (world_size,))


def shard_unet(net: nn.Module, mesh: DeviceMesh, *, bf16: bool) -> nn.Module:
    """Shard ``net`` in place over ``mesh`` (see module docstring); returns it. Gradient
    checkpointing, if wanted, is applied first, by `checkpoint_res_blocks_of`.

    ``net`` may live on the meta device (nothing materialised: for counting, or to
    initialise the shards afterwards with ``to_empty`` + init).
    """
    # On CPU the gathers stay fp32 (autocast still computes in bf16): CPU layer_norm refuses
    # bf16 weights with the fp32 inputs autocast leaves it, where CUDA autocast casts both.
    gather_bf16 = bf16 and mesh.device_type == "cuda"
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if gather_bf16 else None, reduce_dtype=torch.float32,
                                  cast_forward_inputs=False)
    units = [m for m in net.modules() if isinstance(m, SHARD_UNITS)]
    for m in units:
        fully_shard(m, mesh=mesh, mp_policy=policy)
    fully_shard(net, mesh=mesh, mp_policy=policy)
    return net


def checkpoint_res_blocks_of(net: nn.Module) -> None:
    """Recompute each ResNet block's activations in the backward pass (DDP or FSDP alike)."""
    for m in net.modules():
        if isinstance(m, ResBlock):
            checkpoint_module(m)


def set_gradient_sync(net: nn.Module, enabled: bool) -> None:
    """Gradient accumulation: skip the reduce-scatter on all micro-batches but the last."""
    if isinstance(net, FSDPModule):
        net.set_requires_gradient_sync(enabled)


def local(value: Any) -> Any:
    """A replicated DTensor (e.g. the global grad norm) as a plain tensor; others unchanged."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def full_tensors(state: dict[str, torch.Tensor], *, to_cpu: bool = True) -> dict[str, torch.Tensor]:
    """Whole tensors from a (possibly sharded) state dict. Collective when any entry is a
    DTensor: every rank must call it; every rank gets the full result."""
    out = {}
    for k, v in state.items():
        v = v.full_tensor() if isinstance(v, DTensor) else v
        out[k] = v.detach().cpu() if to_cpu else v.detach()
    return out


def local_bytes(net: nn.Module) -> int:
    """Bytes of this rank's parameter shards (works on the meta device)."""
    total = 0
    for p in net.parameters():
        t = p.to_local() if isinstance(p, DTensor) else p
        total += t.numel() * t.element_size()
    return total
