"""fp32 against bf16 sampling where the CPU computes bf16 natively and where it does not:
the evidence for ``dtype="auto"`` (pixcade.diffusion.precision; docs/editing.md).

One machine stands in for both kinds of CPU: oneDNN, which runs autocast's bf16
convolutions and matmuls, is capped below its bf16 instructions with ONEDNN_MAX_CPU_ISA
(AVX512_CORE: an AVX-512 CPU without avx512_bf16, such as Skylake-SP or Cascade Lake;
AVX2, with ATEN_CPU_CAPABILITY=avx2: an AVX2 CPU). Each setting runs in a fresh process
(the caps are read when torch starts), one thread, and measures, in CPU seconds:

- a 512x512 matmul and a 64-channel 3x3 convolution on 4x64x32x32, fp32 and bf16 (that
  the cap really takes the bf16 instructions away);
- the shipped model's base stage at its saved settings on 1, 4 and 16 evaluation prompts
  (one batch each: bf16's lead grows with the batch), fp32 and bf16 alternating, best of
  the repeats; and what ``auto`` resolves to there.

    PYTHONPATH=. python benchmarks/precision_native.py --out benchmarks/results/precision-native-DATE.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from pixcade.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "native": {},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "onednn-avx512-core": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def cpu_seconds(fn, repeats: int) -> float:
    """The best of ``repeats`` calls' CPU time (after one untimed call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def measure(prompts: list[int], steps: int | None, repeats: int) -> dict:
    """One setting, in this process (its environment already set)."""
    import torch

    from pixcade.data.shapes import evaluation_prompts
    from pixcade.diffusion.precision import check_dtype, cpu_computes_bf16
    from pixcade.pipeline.cascade import Cascade

    torch.set_num_threads(1)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    x, conv = torch.randn(4, 64, 32, 32), torch.nn.Conv2d(64, 64, 3, padding=1)
    micro = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        aa, bb = a.to(dtype), b.to(dtype)
        micro[f"matmul_{name}"] = cpu_seconds(lambda: aa @ bb, 10)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
            micro[f"conv_{name}"] = cpu_seconds(lambda: conv(x), 5)

    cascade = Cascade.from_pretrained(ROOT / "pixcade" / "weights" / "shapes")
    base = cascade.names[0]
    settings = {"steps": steps} if steps else {}
    cascade.generate(["a red circle"], stop_after=base, dtype="fp32", progress=False)  # load outside the timing
    runs = []
    for n in prompts:
        captions = [s.caption for s in evaluation_prompts(n)]
        seconds = {"fp32": float("inf"), "bf16": float("inf")}
        for _ in range(repeats):
            for dtype in seconds:
                start = time.process_time()
                cascade.generate(captions, stop_after=base, dtype=dtype, batch_size=n, progress=False, **settings)
                seconds[dtype] = min(seconds[dtype], time.process_time() - start)
        runs.append({"prompts": n, "seconds": seconds, "bf16_over_fp32": seconds["bf16"] / seconds["fp32"]})
    return {
        "env": {k: os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")},
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_computes_bf16": cpu_computes_bf16(),
        "auto_resolves_to": str(check_dtype("auto", "cpu")).removeprefix("torch."),
        "micro_seconds": micro,
        "base_stage_steps": steps or cascade.stage(base).config.sampling.steps,
        "base_stage": runs,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"of {', '.join(SETTINGS)}")
    p.add_argument("--prompts", default="1,4,16", help="prompt counts, each one batch (default 1,4,16)")
    p.add_argument("--steps", type=int, help="base-stage steps (default: its saved ones)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", help="write the JSON here too")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure([int(n) for n in args.prompts.split(",")], args.steps, args.repeats)))
        return 0
    import torch

    result = {"cpu": torch.cpu.get_capabilities().get("cpu_name"), "torch": torch.__version__,
              "python": platform.python_version(), "threads": 1,
              "command": "python benchmarks/precision_native.py " + " ".join(argv), "settings": {}}
    for name in args.settings.split(","):
        env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
        env.update(SETTINGS[name], OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        child = [sys.executable, __file__, "--child", "--prompts", args.prompts, "--repeats", str(args.repeats)]
        child += ["--steps", str(args.steps)] if args.steps else []
        out = subprocess.run(child, env=env, check=True, capture_output=True, text=True).stdout
        result["settings"][name] = json.loads(out.strip().splitlines()[-1])
        print(name, json.dumps(result["settings"][name]), file=sys.stderr)
        if args.out:  # after every setting: a cut run keeps what it measured
            atomic_write_text(Path(args.out), json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
