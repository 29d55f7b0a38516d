"""The first minutes on a GPU: pixcade's CUDA paths run, and what the paper presets cost.

    python benchmarks/gpu_check.py --json OUT.json           # on one NVIDIA GPU (benchmarks/gpu_check.sh)
    python benchmarks/gpu_check.py --fake-small --json OUT   # the same steps on a CPU, tiny models

Steps, each recorded in the JSON (a failing step records its error and the rest still run):
1. ``pytest -m cuda``: the tests that need a GPU (bf16 training step, fused Adam, FSDP with
   nccl, sharded checkpoint round trip, bf16 T5 loading, cascade sampling on CUDA).
2. Training steps of each paper preset at its training resolution (base64 at 64 px, sr256 at
   256 px, sr1024 on 256 px crops), the trainer's step: `Stage.loss` under bf16 autocast,
   backward, grad clipping, fused Adam. Images/s, model FLOPs per image (counted by torch's
   FlopCounterMode), MFU against the GPU's dense bf16 peak, peak memory. The batch halves
   on out-of-memory. The 2B base also runs FSDP-wrapped (one rank, nccl): the sharded code
   path with its bf16 parameter gathering.
3. The shipped cascade samples four prompts on the device (seconds, images made).
4. Sampling memory: one guided call (2 rows, 128 text tokens) of each paper network at its
   output size, fp32 and bf16 autocast (the T5-XXL encoder in fp32), built with
   uninitialised weights: the peak allocated above what was before the call, beside its
   fake-tensor trace (`pixcade.pipeline.memory`, with the GPU's upsampling branch). And
   the shipped cascade's whole-run peak with and without ``--offload``. It runs before
   step 3, whose loading of the text encoder would otherwise be cached already.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import REPO, autocast, gpu_peak_bf16, sync, timed  # noqa: E402

from pixcade.io import atomic_write_text  # noqa: E402
from pixcade.nn.configs import get_preset  # noqa: E402
from pixcade.pipeline import memory  # noqa: E402
from pixcade.pipeline.cascade import Cascade  # noqa: E402
from pixcade.stage import Stage, StageConfig  # noqa: E402
from pixcade.train import fsdp  # noqa: E402
from pixcade.train.config import TrainConfig  # noqa: E402
from pixcade.train.setup import build_optimizer  # noqa: E402

# (label, preset, training resolution, low-res resolution or None, first batch to try)
PAPER = (
    ("base64", "base64", 64, None, 64),
    ("sr256", "sr256", 256, 64, 16),
    ("sr1024 (256 px crops)", "sr1024", 256, 64, 16),
)
FAKE = (
    ("tiny-base", "tiny-base", 16, None, 4),
    ("tiny-sr", "tiny-sr", 32, 16, 4),
)
TEXT_TOKENS = {False: 128, True: 8}  # T5-XXL max length; tiny in fake mode
# Sampling memory in fake mode: (label, preset, output side) of one guided call; a T5 encoder.
FAKE_SAMPLING = (("tiny-base", "tiny-base", 16), ("tiny-sr", "tiny-sr", 32))
T5 = {False: memory.T5_XXL, True: {**memory.T5_XXL, "d_model": 64, "d_ff": 128, "num_layers": 1, "num_heads": 2,
                                   "d_kv": 32, "vocab_size": 1000}}


def run_cuda_tests(fake: bool) -> dict[str, Any]:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"]
    if fake:  # no GPU: the marked tests skip; collect only their file so this stays quick
        cmd.append(str(REPO / "tests" / "test_cuda.py"))
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    return {"returncode": proc.returncode, "summary": tail[-1] if tail else "", "seconds": time.perf_counter() - start,
            "output_tail": "\n".join(tail[-30:]) if proc.returncode else ""}


def _stage(preset: str, resolution: int, lowres: int | None) -> Stage:
    cfg = StageConfig(name="sr" if lowres else "base", resolution=resolution, lowres_resolution=lowres,
                      unet=get_preset(preset))
    return Stage(cfg)


def _train_step(stage: Stage, batch: int, device: torch.device, text_tokens: int) -> Callable[[], None]:
    net = stage.net
    optimizer = build_optimizer(net.parameters(), TrainConfig(), device)
    g = torch.Generator(device=device).manual_seed(0)
    r, cfg = stage.config.resolution, stage.config.unet
    x = torch.rand(batch, 3, r, r, device=device) * 2 - 1
    emb = torch.randn(batch, text_tokens, cfg.text_dim, device=device)
    mask = torch.ones(batch, text_tokens, dtype=torch.bool, device=device)
    lowres = None
    if stage.config.lowres_resolution:
        lr = stage.config.lowres_resolution
        lowres = torch.nn.functional.interpolate(x, size=(lr, lr), mode="area")

    def step() -> None:
        with autocast(str(device), True):
            loss = stage.loss(x, emb, mask, lowres, generator=g).float().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure_training(label: str, preset: str, resolution: int, lowres: int | None, batch: int,
                     device: torch.device, *, steps: int, sharded: bool, fake: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"stage": label, "preset": preset, "resolution": resolution,
                           "mode": "fsdp (1 rank)" if sharded else "single"}
    while True:
        stage = None
        try:
            torch.manual_seed(0)
            with device:  # built on the GPU: initialising 2B parameters on a CPU takes a minute
                stage = _stage(preset, resolution, lowres)
            stage.net.to(device)
            row["parameters"] = sum(p.numel() for p in stage.net.parameters())
            if sharded:
                fsdp.shard_unet(stage.net, fsdp.device_mesh(device, 1), bf16=True)
            step = _train_step(stage, batch, device, TEXT_TOKENS[fake])
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            step()  # warm-up: kernels chosen, optimizer state made
            with FlopCounterMode(display=False) as counter:
                step()
            seconds = timed(step, str(device), steps) / steps
            break
        except torch.OutOfMemoryError:
            del stage
            torch.cuda.empty_cache()
            if batch == 1:
                return {**row, "error": "out of memory at batch 1"}
            batch //= 2
    flops = counter.get_total_flops()
    peak = gpu_peak_bf16() if device.type == "cuda" else None
    row.update(batch=batch, step_s=seconds, images_per_s=batch / seconds, flops_per_image=flops / batch,
               achieved_tflops=flops / seconds / 1e12, mfu=flops / seconds / peak if peak else None,
               peak_bf16_tflops=peak / 1e12 if peak else None,
               peak_memory_gb=torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None)
    return row


def _single_rank_group(device: torch.device) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                         init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def sample_cascade(device: torch.device, fake: bool) -> dict[str, Any]:
    cascade = Cascade.from_pretrained(REPO / "pixcade" / "weights" / "shapes", device=device)
    prompts = ["a red circle", "two blue squares", "a green triangle left of a yellow circle", "three purple stars"]
    extra = {"steps": 2} if fake else {}
    sync(str(device))
    start = time.perf_counter()
    images = cascade.generate(prompts, seed=0, progress=False, **extra)
    sync(str(device))
    return {"prompts": len(prompts), "images": len(images), "size": list(images[0].size),
            "seconds": time.perf_counter() - start, "steps": extra.get("steps", "stage defaults")}


def _call_peak(build: memory.Build, inputs: memory.Inputs, dtype: torch.dtype, device: torch.device) -> int:
    """Peak bytes allocated during one sampling call above what was allocated before it."""
    if device.type != "cuda":
        return memory.measure_call(build, inputs, dtype).peak_bytes
    with torch.device("meta"):
        net = build()
    net = net.to_empty(device=device).eval()  # uninitialised: what it holds doesn't change the bytes
    with device:
        args, kwargs = inputs()
    memory.sampling_call(net, dtype, args, kwargs)  # warm-up: kernels chosen
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    memory.sampling_call(net, dtype, args, kwargs)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del net, args, kwargs
    torch.cuda.empty_cache()
    return peak


def _run_peak(device: torch.device, offload: bool, fake: bool) -> int:
    """Peak bytes allocated on ``device`` by loading the shipped cascade (and, the first time
    in this process, its text encoder) and sampling a prompt."""
    extra = {"steps": 2} if fake else {}
    if device.type != "cuda":
        cascade = Cascade.from_pretrained(REPO / "pixcade" / "weights" / "shapes", device=device, offload=offload)
        run = lambda: cascade.generate(["a red circle"], progress=False, **extra)  # noqa: E731
        memory.measure_peak(run)  # the CPU check skips the loading: the encoder is cached already
        return memory.measure_peak(run)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    cascade = Cascade.from_pretrained(REPO / "pixcade" / "weights" / "shapes", device=device, offload=offload)
    cascade.generate(["a red circle"], progress=False, **extra)
    peak = torch.cuda.max_memory_allocated() - before
    del cascade
    torch.cuda.empty_cache()
    return peak


def sampling_memory(device: torch.device, fake: bool) -> dict[str, Any]:
    rows = []
    calls = [(label, memory.unet_call(get_preset(preset), side, text_tokens=TEXT_TOKENS[fake]))
             for label, preset, side in (FAKE_SAMPLING if fake else memory.PAPER_STAGES)]
    calls.append(("t5 encoder", memory.t5_encoder_call(T5[fake], text_tokens=TEXT_TOKENS[fake])))
    for label, call in calls:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            if label == "t5 encoder" and name == "bf16":
                continue  # the cascade runs its text encoder in fp32
            # Traced on the branch the device takes: a GPU upsamples with Upsample.direct.
            traced = memory.trace_call(*call, dtype, gpu_upsampling=device.type == "cuda")
            row = {"network": label, "dtype": name, "traced_peak_bytes": traced.peak_bytes}
            row.update(_step(lambda: {"measured_peak_bytes": _call_peak(*call, dtype, device)}))
            rows.append(row)
    run = {f"offload={o}": _step(lambda: {"peak_bytes": _run_peak(device, o, fake)}) for o in (False, True)}
    return {"calls": rows, "shapes_cascade": run}


def _step(fn: Callable[[], Any]) -> Any:
    """``fn()``, or its error as a record: a failing step does not stop the others."""
    try:
        return fn()
    except Exception as err:
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, help="where to write the result")
    p.add_argument("--fake-small", action="store_true", help="CPU, tiny presets, 2-step sampling: checks the script")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per preset (default 10; fake 1)")
    a = p.parse_args(argv)
    fake = a.fake_small
    if not fake and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --fake-small to check the script on a CPU)")
    device = torch.device("cpu" if fake else "cuda")
    steps = a.steps or (1 if fake else 10)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fake_small": fake, "device": torch.cuda.get_device_name() if device.type == "cuda"
                                            else platform.processor() or platform.machine(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    result["cuda_tests"] = _step(lambda: run_cuda_tests(fake))
    rows = []
    for label, preset, res, lowres, batch in FAKE if fake else PAPER:
        rows.append({"stage": label, **_step(lambda: measure_training(label, preset, res, lowres, batch, device,
                                                                      steps=steps, sharded=False, fake=fake))})
    label, preset, res, lowres, batch = (FAKE if fake else PAPER)[0]

    def sharded() -> dict[str, Any]:
        _single_rank_group(device)
        try:
            return measure_training(label, preset, res, lowres, batch, device, steps=steps, sharded=True, fake=fake)
        finally:
            torch.distributed.destroy_process_group()

    rows.append({"stage": label, **_step(sharded)})
    result["training"] = rows
    # Before sampling: the text encoder is cached per device once loaded, and the run without
    # offloading must count loading it.
    result["sampling_memory"] = _step(lambda: sampling_memory(device, fake))
    result["sampling"] = _step(lambda: sample_cascade(device, fake))
    result["seconds"] = time.perf_counter() - started
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(a.json), json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
