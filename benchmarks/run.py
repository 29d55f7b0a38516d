"""pixcade vs imagen-pytorch vs diffusers (DeepFloyd IF layout), measured in one run.

    python benchmarks/run.py                     # CPU table (suite "cpu"), a few minutes
    python benchmarks/run.py --quick             # fewer repeats/steps, a first look
    python benchmarks/run.py --device cuda       # GPU table (suite "gpu"), adds MFU
    python benchmarks/run.py --model DIR         # + shapes accuracy of DPM-Solver++ vs 1000-step DDPM

Every measurement runs in a fresh process (so peak memory is its own), implementations
interleaved, and the best of ``--repeats`` is kept (the machine is shared). Ratios are
pixcade / peer; the arrow in each row says which direction is better.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from specs import SUITES  # noqa: E402

from pixcade.io import atomic_write_text  # noqa: E402

# The CPU target of issue 9, and the sampler target (time half; accuracy needs --model).
TRAIN_TARGET = 1.5
SAMPLER_TARGET = 10.0
# (row label, task, result key, True if higher is better, unit scale, format)
ROWS = [
    ("base U-Net parameters (M)", "train-base", "params", None, 1e-6, "{:.2f}"),
    ("base training, images/s", "train-base", "images_per_s", True, 1, "{:.2f}"),
    ("base training, peak memory (MB)", "train-base", "peak_mem_mb", False, 1, "{:.0f}"),
    ("SR U-Net parameters (M)", "train-sr", "params", None, 1e-6, "{:.2f}"),
    ("SR training, images/s", "train-sr", "images_per_s", True, 1, "{:.2f}"),
    ("SR training, peak memory (MB)", "train-sr", "peak_mem_mb", False, 1, "{:.0f}"),
    ("base training FLOPs/image (G)", "flops-base", "flops_per_image", None, 1e-9, "{:.2f}"),
    ("base stage sampling, s/image", "sample-base", "s_per_image", False, 1, "{:.2f}"),
    ("SR stage sampling, s/image", "sample-sr", "s_per_image", False, 1, "{:.2f}"),
    ("whole cascade sampling, s/image", "cascade", "s_per_image", False, 1, "{:.2f}"),
    ("text embedding, prompts/s", "text", "prompts_per_s", True, 1, "{:.1f}"),
]


def split_impl(impl: str, opts: str) -> tuple[str, str]:
    """"pixcade" -> (pixcade, the run's pixcade options); "NAME@bf16,cl" -> its own; "@fp32" = none.

    Peers take only "bf16" (autocast around their training forward pass)."""
    name, at, own = impl.partition("@")
    if not at:
        return name, opts if name == "pixcade" else ""
    return name, "" if own == "fp32" else own


def run_worker(impl: str, task: str, args, opts: str) -> dict:
    name, opts = split_impl(impl, opts)
    cmd = [sys.executable, str(HERE / "worker.py"), "--impl", name, "--task", task, "--suite", args.suite,
           "--device", args.device, "--opts", opts]
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"impl": impl, "task": task, "error": f"worker failed: {tail[:200]}"}
    return dict(json.loads(lines[-1]), impl=impl)


def run_in_process(impl: str, task: str, args, opts: str) -> dict:
    import torch

    import worker

    if args.threads:
        torch.set_num_threads(args.threads)
    name, opts = split_impl(impl, opts)
    try:
        return dict(worker.measure(name, task, SUITES[args.suite].with_batch(args.batch), args.device,
                                   frozenset(o for o in opts.split(",") if o), args.steps), impl=impl)
    except Exception as err:
        return {"impl": impl, "task": task, "error": f"{type(err).__name__}: {err}"}


def better(task: str, a: dict, b: dict) -> dict:
    """Of two repeats, the faster one (memory: the lower peak)."""
    if "error" in a:
        return b
    if "error" in b:
        return a
    key = {"text": "prompts_per_s"}.get(task, "images_per_s")
    if key in a:
        best = a if a[key] >= b[key] else b
    elif "s_per_image" in a:
        best = a if a["s_per_image"] <= b["s_per_image"] else b
    elif "s_per_step_ddpm" in a:
        best = {k: min(a[k], b[k]) if isinstance(a[k], float) else a[k] for k in a}
    else:
        best = a
    if "peak_mem_mb" in a:
        best = dict(best, peak_mem_mb=min(a["peak_mem_mb"], b["peak_mem_mb"]))
    return best


def measure_all(args, impls: list[str], tasks: list[str], opts: str) -> dict:
    run = run_in_process if args.in_process else run_worker
    results: dict = {}
    speeds: dict = {}
    for task in tasks:
        if task == "ddpm-step":
            who = ["pixcade"]
        elif task.startswith("train-"):
            who = impls
        else:  # variants (pixcade@...) are about training options
            who = [i for i in impls if "@" not in i]
        repeats = 1 if task == "flops-base" else args.repeats  # a count, not a timing
        for rep in range(repeats):
            # Alternate the order so a burst of load from elsewhere hits everyone alike.
            order = who if rep % 2 == 0 else list(reversed(who))
            for impl in order:
                r = run(impl, task, args, opts)
                print(f"  {task:12s} {impl:15s} {json.dumps({k: v for k, v in r.items() if k not in ('impl', 'task')})}",
                      file=sys.stderr, flush=True)
                key = (impl, task)
                results[key] = r if key not in results else better(task, results[key], r)
                if "images_per_s" in r:
                    speeds.setdefault(key, []).append(r["images_per_s"])
    out: dict = {}
    for (impl, task), r in results.items():
        if (impl, task) in speeds:  # every repeat, for the median beside the best
            r = dict(r, images_per_s_all=speeds[(impl, task)])
        out.setdefault(impl, {})[task] = r
    for impl, res in out.items():
        b, s = res.get("sample-base", {}), res.get("sample-sr", {})
        if "s_per_image" in b and "s_per_image" in s:
            res["cascade"] = {"s_per_image": b["s_per_image"] + s["s_per_image"],
                              "steps": f"{b['steps']}+{s['steps']}", "sampler": b.get("sampler", "")}
    return out


def _value(res: dict, impl: str, task: str, key: str):
    r = res.get(impl, {}).get(task)
    if r is None:
        return None, "not run"
    if "error" in r:
        return None, r["error"]
    return r.get(key), None


def table(res: dict, impls: list[str]) -> tuple[str, list[str]]:
    peers = [p for p in impls if not p.startswith("pixcade") and "@" not in p]
    head = ["metric"] + list(impls) + [f"pixcade/{p}" for p in peers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    notes: list[str] = []
    for label, task, key, higher, scale, fmt in ROWS:
        cells, vals = [], {}
        for impl in impls:
            v, err = _value(res, impl, task, key)
            if v is None:
                cells.append("n/a")
                if err and err != "not run":
                    notes.append(f"{impl}, {label}: {err}")
                continue
            vals[impl] = v
            cell = fmt.format(v * scale)
            if task in ("sample-base", "sample-sr", "cascade"):
                r = res[impl][task]
                cell += f" ({r.get('sampler', '')} {r['steps']})"
            cells.append(cell)
        if not vals and not any(impl in res and task in res[impl] for impl in impls):
            continue  # a task this run did not measure
        ratios = []
        for p in peers:
            if "pixcade" in vals and p in vals and vals[p]:
                ratio = vals["pixcade"] / vals[p]
                ratios.append(f"{ratio:.2f}x")
            else:
                ratios.append("n/a")
        arrow = "" if higher is None else (" (higher is better)" if higher else " (lower is better)")
        lines.append("| " + " | ".join([label + arrow] + cells + ratios) + " |")
    return "\n".join(lines), notes


def summary(res: dict, args) -> list[str]:
    out = []
    pix = res.get("pixcade", {})
    def precision(impl: str) -> str:
        return "bf16" if "bf16" in split_impl(impl, args.pixcade_opts)[1] else "fp32"

    for which in ("base", "sr"):
        task = f"train-{which}"
        for ours in [i for i in res if i.startswith("pixcade")]:
            for peer in [i for i in res if i.startswith("imagen-pytorch")]:
                v, _ = _value(res, ours, task, "images_per_s")
                w, _ = _value(res, peer, task, "images_per_s")
                defaults = ours == "pixcade" and peer == "imagen-pytorch"
                if not (v and w) or (precision(ours) != precision(peer) and not defaults):
                    continue
                ok = "met" if v / w >= TRAIN_TARGET else "MISSED"
                how = (f"both {precision(ours)}" if precision(ours) == precision(peer)
                       else f"each library's default: pixcade {precision(ours)}, imagen-pytorch {precision(peer)}")
                vs, ws = res[ours][task].get("images_per_s_all", []), res[peer][task].get("images_per_s_all", [])
                # The best of N favours whoever caught a quiet moment; the median says how
                # typical the ratio is when the machine is shared.
                med = (f"; medians of {len(vs)} runs: {statistics.median(vs) / statistics.median(ws):.2f}x"
                       if min(len(vs), len(ws)) >= 3 else "")
                out.append(f"- Target {which} U-Net training >= {TRAIN_TARGET}x imagen-pytorch, {how}: "
                           f"{v / w:.2f}x ({ok}; best of each){med}.")
    d = pix.get("ddpm-step", {})
    b = pix.get("sample-base", {})
    if "s_per_step_ddpm" in d and "steps" in b:
        k = b["steps"]
        ratio = 1000 * d["s_per_step_ddpm"] / (k * d["s_per_step_dpm"])
        ok = "met" if ratio >= SAMPLER_TARGET else "MISSED"
        out.append(f"- pixcade base stage, same network: DPM-Solver++ at {k} steps is {ratio:.1f}x faster than "
                   f"ancestral DDPM at 1000 steps (target {SAMPLER_TARGET:.0f}x: time {ok}; equal shapes "
                   f"accuracy: {'see below' if args.model else 'needs the trained model, --model DIR'}).")
    f, _ = _value(res, "pixcade", "flops-base", "flops_per_image")
    for impl in res:
        fi, _ = _value(res, impl, "flops-base", "flops_per_image")
        ips, _ = _value(res, impl, "train-base", "images_per_s")
        if fi and ips:
            line = f"- {impl}: base training runs at {fi * ips / 1e9:.1f} GFLOP/s of model FLOPs"
            peak = args.peak_flops
            if peak:
                line += f", MFU {fi * ips / peak:.1%} of {peak / 1e12:.0f} TFLOP/s"
            out.append(line + ".")
    return out


def machine(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    desc = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if device.startswith("cuda"):
        desc = f"{torch.cuda.get_device_name()}, " + desc
    return desc


def shapes_accuracy(args) -> list[str]:
    import torch
    from shapes_speed import compare

    if args.threads:  # runs in this process, not in a worker
        torch.set_num_threads(args.threads)
    return compare(args.model, n=args.shapes_prompts, steps=args.pixcade_steps, device=args.device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--suite", default=None, choices=sorted(SUITES), help="sizes (default: by device)")
    p.add_argument("--quick", action="store_true", help="one repeat, fewer sampling steps run")
    p.add_argument("--repeats", type=int, default=None, help="best of N per measurement (default 2, quick 1)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps actually run per stage; longer schedules are extrapolated "
                        "linearly (default: the suite's; 0 = run every step)")
    p.add_argument("--impls", default=None,
                   help="comma-separated; NAME@OPTS adds a training column with other options "
                        "(@fp32 = none; peers take @bf16). Default: pixcade, pixcade@fp32, "
                        "imagen-pytorch, imagen-pytorch@bf16, diffusers")
    p.add_argument("--tasks", default="train-base,train-sr,flops-base,sample-base,sample-sr,text,ddpm-step")
    p.add_argument("--pixcade-opts", default=None,
                   help="pixcade speed options: bf16,cl,compile,ckpt,foreach (default: the device's best)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per measurement (default: torch's)")
    p.add_argument("--batch", type=int, default=None,
                   help="every batch size of the suite: e.g. the gpu suite's models at batch 1 on a CPU "
                        "(a first look; not comparable with the suite's table)")
    p.add_argument("--in-process", action="store_true", help="no subprocesses (memory then is not per run)")
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--model", default=None, help="a saved cascade: adds the shapes-accuracy comparison")
    p.add_argument("--shapes-prompts", type=int, default=30)
    p.add_argument("--pixcade-steps", default=None,
                   help="DPM-Solver++ step counts for --model, comma-separated (default: the base stage's)")
    a = p.parse_args(argv)
    if a.batch is not None and a.batch < 1:
        p.error(f"--batch must be >= 1, got {a.batch}")
    if a.pixcade_steps is not None:
        try:
            a.pixcade_steps = [int(k) for k in a.pixcade_steps.split(",") if k.strip()]
        except ValueError:
            p.error(f"--pixcade-steps takes comma-separated integers, got {a.pixcade_steps!r}")
        if not a.pixcade_steps or min(a.pixcade_steps) < 1:
            p.error(f"--pixcade-steps takes step counts >= 1, got {a.pixcade_steps}")

    import torch
    from common import gpu_peak_bf16

    from pixcade.diffusion.precision import computes_bf16

    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = a.device.startswith("cuda")
    a.suite = a.suite or ("gpu" if gpu else "cpu")
    a.repeats = a.repeats or (1 if a.quick else 2)
    suite = SUITES[a.suite].with_batch(a.batch)
    if a.steps is None:
        a.steps = 2 if a.quick else suite.sample_steps
    a.steps = a.steps or None  # 0 -> every step
    if a.pixcade_opts is None:
        # The trainer's default precision (train.bf16 "auto"): bf16 autocast where the device
        # computes bf16 natively, else fp32. channels_last pays on GPUs, not on the CPUs
        # measured here (benchmarks/README.md).
        a.pixcade_opts = ",".join(["bf16"] * computes_bf16(a.device) + ["cl"] * gpu)
    a.peak_flops = gpu_peak_bf16() if gpu else None
    if a.impls is None:
        # Each library's default precision, plus the other precision for pixcade and
        # imagen-pytorch's training (its trainer offers bf16 through accelerate).
        other = "pixcade@fp32" if "bf16" in a.pixcade_opts else "pixcade@bf16"
        a.impls = ",".join(["pixcade", other, "imagen-pytorch", "imagen-pytorch@bf16", "diffusers"])
    impls = [i for i in a.impls.split(",") if i]
    tasks = [t for t in a.tasks.split(",") if t]

    started = datetime.datetime.now(datetime.timezone.utc)
    res = measure_all(a, impls, tasks, a.pixcade_opts)
    text, notes = table(res, impls)
    print(f"\n## {a.suite} suite on {a.device}: {started:%Y-%m-%d %H:%M} UTC, {machine(a.device)}")
    print(f"pixcade training options: {a.pixcade_opts or 'fp32'} (fused AdamW; sampling in fp32 for all); "
          f"sampling steps run per stage: {a.steps or 'all'} (longer schedules extrapolated); "
          f"threads: {a.threads or torch.get_num_threads()}; best of {a.repeats} runs"
          + (f"; every batch size set to {a.batch} (--batch)" if a.batch else "") + "\n")
    print(text)
    lines = summary(res, a)
    if a.model:
        lines += shapes_accuracy(a)
    if lines or notes:
        print()
        for ln in lines:
            print(ln)
        for n in notes:
            print(f"- not measured: {n}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(a.json), json.dumps({
            "date": started.isoformat(), "machine": machine(a.device), "device": a.device, "suite": suite.describe(),
            "pixcade_opts": a.pixcade_opts, "steps_run": a.steps, "batch": a.batch, "results": res, "summary": lines,
        }, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
