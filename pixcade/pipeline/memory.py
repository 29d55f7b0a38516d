"""Peak memory of one network call in sampling: traced at any size without memory, measured
at small sizes on the CPU.

Traced: the call runs on fake tensors (`torch._subclasses.fake_tensor`: shapes, dtypes and
the CPU's dispatch, autocast included, but no data), under a dispatch mode that adds up
the bytes of every storage an operator creates and subtracts them when the last tensor
on it dies. The peak of that sum is the peak of live tensors, at the paper's sizes in
seconds. It follows the CPU's code path (pixcade's Upsample without the upsampled image,
attention in fp32 under bf16 autocast); what it cannot see is memory an operator
allocates and frees inside itself (a convolution's workspace). That is small, except in bf16
on a CPU that emulates it (no avx512_bf16 or AMX), where the kernels hold fp32 copies of
their operands: 2.4x the traced peak at tiny-base on an AVX2 EPYC (sampling's ``auto``
precision is fp32 there).

Measured: the same call on real tensors under ``torch.profiler`` with ``profile_memory``,
which records every allocation and free of c10's CPU allocator (all tensor storages,
and the temporaries ATen kernels make) with its size, in order; the peak of the running
sum is the peak of live bytes. torch 2.13 has no CPU counterpart of
``torch.cuda.max_memory_allocated``, and peak RSS was the alternative rejected: it adds
the interpreter, libraries and the profiler's own records, and malloc keeps freed blocks
(its mmap threshold rises after a large free), so it says what the process held, not what
the tensors needed. The allocator's stream is exact bytes and the same on every run:
no timing enters it, so a loaded machine does not change it.

Both give, for a call, the bytes above what was allocated before it: activations and,
under autocast, the half-precision copies of weights (each alive while its layer runs:
sampling's autocast keeps no cast cache, `pixcade.diffusion.precision`).
"""

from __future__ import annotations

import weakref
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pixcade.diffusion.precision import autocast_net
from pixcade.nn.configs import UNetConfig
from pixcade.nn.layers import Upsample
from pixcade.nn.unet import EfficientUNet
from pixcade.text.encoders import DEFAULT_MAX_LENGTH as TEXT_TOKENS

# The paper's cascade: (label, U-Net preset, output side) of each stage, and its text encoder
# (fields of transformers.T5Config).
PAPER_STAGES = (("base (2B, 64 px)", "base64", 64), ("SR 64->256 (600M)", "sr256", 256),
                ("SR 256->1024 (400M)", "sr1024", 1024))
T5_XXL = dict(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, vocab_size=32128,
              feed_forward_proj="gated-gelu")
# A network and its call: ``build()`` makes the network, ``inputs()`` its (args, kwargs).
Build = Callable[[], torch.nn.Module]
Inputs = Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]


@dataclass(frozen=True)
class CallMemory:
    """Bytes of one network call: its weights, and the peak above what was allocated before
    the call (activations plus, under autocast, half-precision copies of weights:
    ``weight_copies`` of them at that peak, known when traced, None when measured)."""

    parameters: int
    weight_bytes: int
    peak_bytes: int
    weight_copies: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        return {"parameters": self.parameters, "weight_bytes": self.weight_bytes,
                "peak_bytes": self.peak_bytes, "weight_copies": self.weight_copies}


class _LiveBytes(TorchDispatchMode):
    """Bytes of the storages operators created that some tensor still uses, and their peak."""

    def __init__(self, weights: set[int]):
        super().__init__()
        self.weights = weights  # storage keys of the parameters
        self.refs: dict[int, int] = {}  # storage key -> live tensors on it
        self.size: dict[int, int] = {}
        self.copies: set[int] = set()  # storages holding a cast copy of a parameter
        self.tracked: set[int] = set()  # ids of live tensors counted in refs
        self.now = self.now_copies = self.peak = self.peak_copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        given = {_key(a) for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        is_copy = func is torch.ops.aten._to_copy.default and bool(given & self.weights)
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or id(t) in self.tracked:
                continue
            key = _key(t)
            if key not in self.refs:
                if key in given:  # a view of (or in-place on) memory from before the call
                    continue
                self.refs[key], self.size[key] = 0, t.untyped_storage().nbytes()
                self.now += self.size[key]
                if is_copy:
                    self.copies.add(key)
                    self.now_copies += self.size[key]
                if self.now > self.peak:
                    self.peak, self.peak_copies = self.now, self.now_copies
            self.refs[key] += 1
            self.tracked.add(id(t))
            weakref.finalize(t, self._release, key, id(t)).atexit = False
        return out

    def _release(self, key: int, tensor_id: int) -> None:
        self.tracked.discard(tensor_id)
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            size = self.size.pop(key)
            self.now -= size
            if key in self.copies:
                self.copies.discard(key)
                self.now_copies -= size


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def sampling_call(net: torch.nn.Module, dtype: torch.dtype, args: tuple, kwargs: dict) -> Any:
    """The call as sampling makes it: no grad, under autocast to ``dtype`` (`autocast_net`)
    on the device of the network's weights."""
    with torch.no_grad():
        return autocast_net(net, dtype, next(net.parameters()).device)(*args, **kwargs)


def _weights(net: torch.nn.Module) -> tuple[int, int]:
    params = list(net.parameters())
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def trace_call(build: Build, inputs: Inputs, dtype: torch.dtype = torch.float32,
               gpu_upsampling: bool = False) -> CallMemory:
    """Peak live bytes of one call on fake tensors: no memory is allocated, any size works.

    The fake tensors are CPU tensors, so the CPU's branches run; ``gpu_upsampling`` makes
    `Upsample` take the GPU's (`Upsample.direct`), where the two differ most in memory."""
    upsampling = mock.patch.object(Upsample, "forward", Upsample.direct) if gpu_upsampling else nullcontext()
    with FakeTensorMode(), upsampling:
        net = build().eval()
        args, kwargs = inputs()
        count, nbytes = _weights(net)
        live = _LiveBytes({_key(p) for p in net.parameters()})
        with live:
            out = sampling_call(net, dtype, args, kwargs)
        del out
    return CallMemory(count, nbytes, live.peak, live.peak_copies)


def measure_call(build: Build, inputs: Inputs, dtype: torch.dtype = torch.float32) -> CallMemory:
    """Peak bytes the CPU allocator held during one real call, above what it held before.

    One call first, unrecorded: what a first call sets up once (thread pools, kernel caches)
    is not the call's."""
    torch.manual_seed(0)
    net = build().eval()
    args, kwargs = inputs()
    count, nbytes = _weights(net)
    measure_peak(lambda: sampling_call(net, dtype, args, kwargs))
    return CallMemory(count, nbytes, measure_peak(lambda: sampling_call(net, dtype, args, kwargs)))


def measure_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes the CPU allocator held while ``fn()`` ran (its result dropped), above what
    it held before. Single-threaded, so the kernels' temporaries are one thread's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    finally:
        torch.set_num_threads(threads)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())  # stable: same-instant events keep their order
    now = peak = 0
    for e in events:
        now += e.nbytes()
        peak = max(peak, now)
    return peak


def unet_call(config: UNetConfig, resolution: int, rows: int = 2,
              text_tokens: int = TEXT_TOKENS) -> tuple[Build, Inputs]:
    """A U-Net call at ``resolution``: ``rows`` rows (one image under guidance: 2)."""

    def inputs() -> tuple[tuple[Any, ...], dict[str, Any]]:
        x = torch.randn(rows, config.in_channels, resolution, resolution)
        text = torch.randn(rows, text_tokens, config.text_dim)
        mask = torch.ones(rows, text_tokens, dtype=torch.bool)
        kwargs = {"lowres": torch.randn_like(x), "aug_t": torch.rand(rows)} if config.lowres_cond else {}
        if config.guidance_conditioned:
            kwargs["guidance"] = torch.full((rows,), 5.0)
        return (x, torch.rand(rows), text, mask), kwargs

    return (lambda: EfficientUNet(config)), inputs


def t5_encoder_call(t5_config: dict[str, Any], rows: int = 2,
                    text_tokens: int = TEXT_TOKENS) -> tuple[Build, Inputs]:
    """A T5 encoder (built from ``t5_config``, fields of ``transformers.T5Config``) encoding
    ``rows`` prompts of ``text_tokens`` tokens (a prompt and its negative: 2)."""
    import transformers  # here: ~2.5 s to import, and only the T5 rows need it

    def inputs() -> tuple[tuple[Any, ...], dict[str, Any]]:
        ids = torch.zeros(rows, text_tokens, dtype=torch.long)
        return (), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    return (lambda: transformers.T5EncoderModel(transformers.T5Config(**t5_config))), inputs
