"""The precision a network is run in for sampling (``--dtype``), and what ``auto`` means.

A network run in half precision computes under autocast; its inputs and outputs, and the
sampler, guidance and thresholding around it, stay in float32 (the U-Net returns x's
dtype), so only the network's arithmetic is rounded.

``auto`` (the default) is bf16 where the device computes bf16 natively and fp32 elsewhere.
Why, measured on the shipped shapes model (docs/editing.md; benchmarks/results/
editing-precision-*, shapes-bf16-300-* and precision-native-*.json): bf16 matches fp32 in
accuracy (0.853 / 0.830 held-out on the card's 300 prompts, as in fp32; 0.88 against 0.88
on 100 prompts with no discordant prompt) and differs by 0.37 of 255 per pixel on average,
so the faster of the two is the default. With native bf16 (an EPYC's avx512_bf16) the base
stage is 0.66x fp32's time on 16 prompts and never slower, the cascade 1.44x faster on
100; with oneDNN capped below the bf16 instructions (standing in for a CPU without them)
bf16 took 1.8-2x fp32's time on AVX-512 and 14-24x on AVX2, so fp32 is the default there.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from pixcade.diffusion.settings import DTYPE_NAMES
from pixcade.errors import PixcadeError

if TYPE_CHECKING:
    from pixcade.diffusion.settings import SamplingSettings

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NAMES = {dtype: name for name, dtype in DTYPES.items()}

# oneDNN (which runs autocast's bf16 convolutions and matmuls on the CPU) can be capped to an
# instruction set by ONEDNN_MAX_CPU_ISA (older name DNNL_MAX_CPU_ISA); these caps leave out
# the bf16 instructions, so bf16 is not native under them even on a CPU that has them.
_ISAS_WITHOUT_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"})


def cpu_computes_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware that oneDNN may use: avx512_bf16 or
    AMX-bf16 (cpuid, as torch reports it), and no ONEDNN_MAX_CPU_ISA cap below them.

    ATEN_CPU_CAPABILITY is not consulted: it picks torch's own elementwise kernels, not the
    convolutions and matmuls autocast runs in bf16, and capping it to avx2 left bf16's lead
    unchanged (docs/editing.md).
    """
    caps = torch.cpu.get_capabilities()
    if not (caps.get("avx512_bf16") or caps.get("amx_bf16")) or not torch.backends.mkldnn.is_available():
        return False
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    return cap.strip().upper() not in _ISAS_WITHOUT_BF16


def computes_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively (an emulating GPU or mps: no; mps unmeasured)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return kind == "cpu" and cpu_computes_bf16()


def check_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The torch dtype ``name`` means on ``device`` if it can sample in it, else a one-line error."""
    if name not in DTYPE_NAMES:
        raise PixcadeError(f"unknown dtype {name!r} (choose from {', '.join(DTYPE_NAMES)})")
    if name == "auto":
        return torch.bfloat16 if computes_bf16(device) else torch.float32
    kind = torch.device(device).type
    if name == "fp16" and kind == "cpu":
        raise PixcadeError("fp16 sampling needs an accelerator (cuda or mps); on the CPU use bf16")
    return DTYPES[name]


def dtype_name(name: str, device: torch.device | str) -> str:
    """The precision (fp32, bf16, fp16) ``name`` samples in on ``device``, for records."""
    return NAMES[check_dtype(name, device)]


def stage_precisions(settings: Mapping[str, SamplingSettings], device: torch.device | str) -> dict[str, str]:
    """{stage: the precision it samples in on ``device``} for per-stage ``settings``: what
    run.json, a benchmark report and a served job record."""
    return {name: dtype_name(s.dtype, device) for name, s in settings.items()}


def autocast_net(net: Callable[..., torch.Tensor], dtype: torch.dtype, device: torch.device) -> Callable[..., torch.Tensor]:
    """``net`` run under autocast to ``dtype`` on ``device`` (itself for float32)."""
    if dtype == torch.float32:
        return net

    def run(*args: Any, **kwargs: Any) -> torch.Tensor:
        # No cast cache: it keeps a half-precision copy of every weight until the call ends,
        # though a U-Net call uses each weight once (the 2B base: 3.7 GiB held for nothing).
        with torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=False):
            return net(*args, **kwargs)

    return run
