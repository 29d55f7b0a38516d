"""DPM-Solver++ vs 1000-step ancestral DDPM on a trained cascade's base stage: time and
shapes accuracy (issue 9's target: equal accuracy, >= 10x faster).

    python benchmarks/run.py --model DIR --tasks ddpm-step --impls pixcade
"""

from __future__ import annotations

import time

from pixcade.eval.paired import paired_difference

ANCESTRAL_STEPS = 1000


def compare(model_dir: str, n: int = 30, steps: list[int] | None = None, device: str = "cpu",
            seed: int = 0) -> list[str]:
    """Markdown lines: shapes accuracy and seconds per image of DPM-Solver++ at each step count
    in ``steps`` (default: the stage's own) and of 1000-step ancestral DDPM, and the ratios.

    Several step counts share one DDPM run (the expensive half), so "equal accuracy" can be read
    off the smallest count that matches it.
    """
    from pixcade.data.shapes import evaluation_prompts
    from pixcade.eval.shapes import score
    from pixcade.pipeline.cascade import Cascade

    cascade = Cascade.from_pretrained(model_dir, device=device)
    base = cascade.names[0]
    counts = steps or [cascade.stage(base).config.sampling.steps]
    scenes = evaluation_prompts(n)
    captions = [sc.caption for sc in scenes]
    # Load the text encoder and warm the kernels outside the timed runs.
    cascade.generate(captions[:1], seed=seed, steps=1, stop_after=base, progress=False)

    def run(sampler: str, k: int) -> tuple[float, float, list[bool]]:
        start = time.perf_counter()
        lowres = cascade.generate(captions, seed=seed, sampler=sampler, steps=k, stop_after=base, progress=False)
        seconds = (time.perf_counter() - start) / len(captions)
        # Scored on the final images: the spec's scorer is unreliable at base resolution, and
        # every run gets the same super-resolution stages with their default settings.
        images = lowres
        if len(cascade.names) > 1:
            images = cascade.generate(captions, seed=seed, start_image=lowres, progress=False)
        report = score(images, scenes)
        return seconds, report["overall"]["accuracy"], [r["passed"] for r in report["results"]]

    t_slow, a_slow, p_slow = run("ddpm", ANCESTRAL_STEPS)
    lines = [f"- shapes accuracy (final images; base stage sampled each way) of {model_dir} on {n} evaluation "
             f"prompts, ancestral DDPM {ANCESTRAL_STEPS} steps: {a_slow:.3f} ({t_slow:.2f} s/image for the base stage)."]
    for k in counts:
        t_fast, a_fast, p_fast = run("dpm++", k)
        only_fast, only_slow, p = paired_difference(p_fast, p_slow)
        lines.append(
            f"- DPM-Solver++ {k} steps: {a_fast:.3f} ({t_fast:.2f} s/image): {t_slow / t_fast:.1f}x faster than "
            f"ancestral DDPM {ANCESTRAL_STEPS}, accuracy difference {a_fast - a_slow:+.3f} (prompts only "
            f"DPM-Solver++ passed: {only_fast}, only DDPM: {only_slow}; exact McNemar p = {p:.2f}).")
    return lines
