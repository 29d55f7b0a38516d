"""Peak memory of sampling the paper's cascade (2B base at 64 px, 600M SR to 256, 400M SR to
1024, T5-XXL encoder): the tables of docs/editing.md.

    PYTHONPATH=. python scripts/memory_table.py --measure   # ~6 min on one core; writes the JSON
    PYTHONPATH=. python scripts/memory_table.py             # print the tables from the JSON

One network call of sampling: one image under guidance (2 rows: conditional and
unconditional), 128 text tokens; fp32, or bf16 under autocast as ``--dtype bf16`` runs it.
How the bytes are traced and measured: `pixcade.pipeline.memory`.

- Small sizes: each paper preset with its channels, head size and text width divided by 16
  and by 8 (same heads, same depth; with T5-XXL's full 4096-wide text the bf16 copy of the
  text-pooling weight, 67 MB, would be the peak at every small size and hide the rest), the
  SR stages at half (sr256) and a quarter (sr1024) of their output side, and a T5-XXL cut
  to 1/16 of its width and 1/12 of its depth, traced and measured on this CPU.
- Paper sizes: traced only, on the CPU's code path and again with Upsample's GPU branch
  (a GPU also runs attention in bf16 under bf16 autocast, which the trace does not follow:
  it can only lower the bf16 bytes).
- A real two-stage cascade (base64 / 4 and sr256 / 16 with MiniLM text, random weights,
  guidance 5 at both stages, 2 steps): the peak of a whole ``generate`` above what was
  allocated before it, beside each network's call measured alone, to show the peak is
  the largest call, not the sum.

Peak of a run, composed from the calls: without offloading every network's weights stay
resident, plus the largest call's peak; with ``--offload`` one network at a time, so the
largest of (its weights + its call's peak). The text encoder runs in fp32 whatever
``--dtype`` says (the cascade loads it so).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from pixcade.io import atomic_write_text
from pixcade.nn.configs import MINILM_DIM, get_preset
from pixcade.pipeline import memory
from pixcade.pipeline.cascade import Cascade
from pixcade.stage import Stage, StageConfig
from pixcade.train.memory import narrowed

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "sampling-memory.json"
SMALL_SIDES = {"base64": 64, "sr256": 128, "sr1024": 256}  # output side measured small, by preset
T5_SMALL = {**memory.T5_XXL, "d_model": 256, "d_ff": 640, "num_layers": 2, "num_heads": 4}
T5_LABEL = "T5-XXL encoder"
DIVISORS = (16, 8)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GIB, MB = 2**30, 1e6


def small_rows() -> list[dict]:
    rows = []
    for label, preset, _ in memory.PAPER_STAGES:
        side = SMALL_SIDES[preset]
        for d in DIVISORS:
            config = narrowed(get_preset(preset, text_dim=memory.T5_XXL["d_model"] // d), d)
            call = memory.unet_call(config, side)
            for name, dtype in DTYPES.items():
                rows.append(_row(label, f"channels / {d}, {side} px", name,
                                 memory.trace_call(*call, dtype), memory.measure_call(*call, dtype)))
    call = memory.t5_encoder_call(T5_SMALL)
    rows.append(_row(T5_LABEL, "width / 16, 2 of 24 layers", "fp32", memory.trace_call(*call),
                     memory.measure_call(*call)))
    return rows


def _row(label: str, size: str, dtype: str, traced: memory.CallMemory, measured: memory.CallMemory) -> dict:
    return {"network": label, "size": size, "dtype": dtype, "parameters": measured.parameters,
            "traced_parameters": traced.parameters, "weight_bytes": measured.weight_bytes,
            "measured_peak_bytes": measured.peak_bytes, "traced_peak_bytes": traced.peak_bytes,
            "traced_weight_copies": traced.weight_copies}


def paper_rows() -> list[dict]:
    rows = []
    for label, preset, side in memory.PAPER_STAGES:
        call = memory.unet_call(get_preset(preset), side)
        for name, dtype in DTYPES.items():
            row = {"network": label, "dtype": name, **memory.trace_call(*call, dtype).to_dict()}
            row["peak_bytes_gpu_upsampling"] = memory.trace_call(*call, dtype, gpu_upsampling=True).peak_bytes
            rows.append(row)
    t5 = memory.trace_call(*memory.t5_encoder_call(memory.T5_XXL))
    rows.append({"network": T5_LABEL, "dtype": "fp32", **t5.to_dict()})
    return rows


def cascade_check() -> dict:
    base = narrowed(get_preset("base64", text_dim=MINILM_DIM), 4)
    sr = narrowed(get_preset("sr256", text_dim=MINILM_DIM), 16)
    stages = [Stage(StageConfig("base", 64, base)), Stage(StageConfig("sr", 256, sr, lowres_resolution=64))]
    cascade = Cascade(stages, "minilm", max_length=32)  # random weights: the bytes are the same
    prompt, settings = "a red circle to the left of a blue square", {"guidance_weight": 5.0, "steps": 2}
    emb, _ = cascade.encode([prompt])
    run = lambda: cascade.generate([prompt], progress=False, **settings)  # noqa: E731
    memory.measure_peak(run)  # the first run sets up what every later one reuses
    calls = {"text encoder": memory.measure_peak(lambda: cascade.encode([prompt]))}
    calls.update({s.config.name: memory.measure_call(*memory.unet_call(s.config.unet, s.config.resolution,
                                                                       text_tokens=emb.shape[1])).peak_bytes
                  for s in cascade.stages})
    return {"cascade": "base64 with channels / 4, sr256 with channels / 16, MiniLM text, 64 -> 256 px",
            "prompt": prompt, "settings": settings, "text_tokens": emb.shape[1], "generate_peak_bytes": memory.measure_peak(run),
            "call_peak_bytes": calls}


def run_peaks(paper: list[dict], key: str = "peak_bytes") -> dict[str, tuple[float, float]]:
    """{dtype: (peak bytes without offloading, with)} composed from the traced calls' ``key``
    (the text encoder's: its only trace)."""
    out = {}
    for name in DTYPES:
        nets = [r for r in paper if r["dtype"] == name or r["network"] == T5_LABEL]
        weights = sum(r["weight_bytes"] for r in nets)
        peaks = [r.get(key, r["peak_bytes"]) for r in nets]
        out[name] = (weights + max(peaks), max(r["weight_bytes"] + p for r, p in zip(nets, peaks)))
    return out


def tables(result: dict) -> list[str]:
    """Markdown: small sizes measured and traced, paper sizes traced, the run's peaks, the
    cascade check."""
    small = ["| network | size | parameters | weights MB | call peak MB, fp32: measured / traced "
             "| bf16: measured / traced |", "|---|---|---:|---:|---:|---:|"]
    by = {(r["network"], r["size"], r["dtype"]): r for r in result["small"]}
    for (net, size, dtype), r in by.items():
        if dtype != "fp32":
            continue
        cells = [net, size, f"{r['parameters'] / 1e6:.1f}M", f"{r['weight_bytes'] / MB:.0f}"]
        for d in DTYPES:
            x = by.get((net, size, d))
            cells.append(f"{x['measured_peak_bytes'] / MB:.1f} / {x['traced_peak_bytes'] / MB:.1f}" if x else "-")
        small.append("| " + " | ".join(cells) + " |")
    paper = ["| network | parameters | weights GiB (fp32) | call peak GiB, fp32 | bf16 "
             "| fp32 / bf16 with a GPU's upsampling |", "|---|---:|---:|---:|---:|---:|"]
    rows = {(r["network"], r["dtype"]): r for r in result["paper"]}
    for net in dict.fromkeys(r["network"] for r in result["paper"]):
        f, b = rows[(net, "fp32")], rows.get((net, "bf16"))
        cells = [f"{f['peak_bytes'] / GIB:.2f}", "fp32 always", "-"]
        if b:
            cells[1:] = [f"{b['peak_bytes'] / GIB:.2f}", " / ".join(
                f"{r['peak_bytes_gpu_upsampling'] / GIB:.2f}" for r in (f, b))]
        paper.append(f"| {net} | {f['parameters'] / 1e9:.2f}B | {f['weight_bytes'] / GIB:.2f} | " + " | ".join(cells) + " |")
    run = ["| setting | peak GiB, no offload | peak GiB, --offload |", "|---|---:|---:|"]
    for key, path in (("peak_bytes", ""), ("peak_bytes_gpu_upsampling", ", a GPU's upsampling")):
        for name, (whole, offload) in run_peaks(result["paper"], key).items():
            run.append(f"| {name}{' (autocast)' if name == 'bf16' else ''}{path} | {whole / GIB:.1f} "
                       f"| {offload / GIB:.1f} |")
    c = result["cascade"]
    calls = c["call_peak_bytes"]
    check = [f"| {c['cascade']}, guidance 5, 2 steps | peak MB above the resident weights |", "|---|---:|"]
    check += [f"| {name} call alone | {b / MB:.1f} |" for name, b in calls.items()]
    check += [f"| sum of the calls | {sum(calls.values()) / MB:.1f} |",
              f"| whole `generate` (2 steps) | {c['generate_peak_bytes'] / MB:.1f} |"]
    return ["\n".join(t) for t in (small, paper, run, check)]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", action="store_true", help=f"trace and measure again, and write {RESULT.name}")
    args = p.parse_args(argv)
    if args.measure:
        result = {"small": small_rows(), "paper": paper_rows(), "cascade": cascade_check(),
                  "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                  "command": "PYTHONPATH=. python scripts/memory_table.py --measure"}
        atomic_write_text(RESULT, json.dumps(result, indent=1) + "\n")
    print("\n\n".join(tables(json.loads(RESULT.read_text()))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
