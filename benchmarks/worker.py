"""One measurement of one implementation; prints one JSON line.

run.py starts a fresh process per measurement so the peak resident memory it reads
(getrusage max RSS) belongs to that measurement alone. Usable by hand, e.g.:
    python benchmarks/worker.py --impl pixcade --task train-base --suite cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import current_rss_mb, peak_rss_mb, prompts, sync, timed  # noqa: E402
from specs import SUITES, Suite  # noqa: E402

TASKS = ("train-base", "train-sr", "sample-base", "sample-sr", "text", "ddpm-step", "flops-base")
GUIDANCE = 5.0


def implementation(name: str):
    if name == "pixcade":
        import impl_pixcade

        return impl_pixcade
    from peers import PEERS

    return PEERS[name]


def _memory(device: str, rss_before: float) -> dict:
    if torch.device(device).type == "cuda":
        return {"peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20}
    return {"peak_mem_mb": peak_rss_mb() - rss_before, "peak_rss_mb": peak_rss_mb()}


def measure(impl_name: str, task: str, suite: Suite, device: str, opts: frozenset[str],
            steps: int | None = None) -> dict:
    impl = implementation(impl_name)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_before = current_rss_mb()
    torch.manual_seed(0)
    out: dict = {"impl": impl_name, "task": task}

    if task in ("train-base", "train-sr"):
        which = task.split("-")[1]
        step, n_params = impl.train_step(suite, which, device, opts)
        step()  # warm-up: allocator, kernels, lazy optimiser state
        if cuda:
            step()
        # Each step timed on its own; the median shrugs off a burst of load from elsewhere.
        seconds = statistics.median(timed(step, device) for _ in range(suite.train_steps))
        batch = suite.sr_train_batch if which == "sr" else suite.train_batch
        out.update(params=n_params, images_per_s=batch / seconds, **_memory(device, rss_before))

    elif task in ("sample-base", "sample-sr"):
        which = task.split("-")[1]
        full = impl.default_steps(which)
        run_steps = full if steps is None else min(full, steps)
        run = impl.stage_sampler(suite, which, device, run_steps, opts, GUIDANCE)
        if cuda:
            run()
        seconds = timed(run, device)
        per_image = seconds / suite.sample_batch
        out.update(steps=full, steps_run=run_steps, sampler=getattr(impl, "SAMPLER", ""),
                   s_per_image_run=per_image, s_per_image=per_image * full / run_steps)

    elif task == "text":
        encode = impl.text_encoder(device)
        texts = prompts(suite.text_prompts)
        encode(texts[:8])
        seconds = timed(lambda: encode(texts), device)
        out.update(prompts_per_s=len(texts) / seconds)

    elif task == "ddpm-step":
        # pixcade's own base network under its ancestral sampler, for the 1000-step comparison.
        run_steps = steps or suite.sample_steps
        st = impl.stage(suite.base, suite, device, opts)
        st.net.eval()
        from common import make_batch

        data = make_batch(suite.base, suite.sample_batch, suite, device)
        per = {}
        for sampler in ("ddpm", "dpm++"):
            run = lambda: st.sample(data["text_emb"], data["text_mask"], sampler=sampler,  # noqa: E731
                                    steps=run_steps, guidance_weight=GUIDANCE)
            st.sample(data["text_emb"], data["text_mask"], sampler=sampler, steps=1, guidance_weight=GUIDANCE)
            per[sampler] = timed(run, device) / suite.sample_batch / run_steps
        out.update(s_per_step_ddpm=per["ddpm"], s_per_step_dpm=per["dpm++"])

    elif task == "flops-base":
        out.update(flops_per_image=train_flops(impl, suite, device, opts))

    else:
        raise SystemExit(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
    sync(device)
    return out


def train_flops(impl, suite: Suite, device: str, opts: frozenset[str]) -> float:
    """FLOPs of one base-U-Net training step per image (forward + backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    step, _ = impl.train_step(suite, "base", device, opts - {"compile"})
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / suite.train_batch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--impl", required=True)
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--suite", default="cpu", choices=sorted(SUITES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--opts", default="", help="pixcade speed options, comma-separated")
    p.add_argument("--steps", type=int, default=None, help="sampling steps actually run (default: all)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="every batch size of the suite (default: the suite's)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    opts = frozenset(o for o in a.opts.split(",") if o)
    try:
        result = measure(a.impl, a.task, SUITES[a.suite].with_batch(a.batch), a.device, opts, a.steps)
    except Exception as err:  # reported in the table, not a crash of the whole run
        result = {"impl": a.impl, "task": a.task, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
