"""Upper bounds on size-like inputs, checked before anything is allocated.

A typo such as ``--n 1000000000`` or ``--res 100000`` must be a one-line error at once, not
minutes of allocation ending in the kernel's OOM killer. The bounds are far above any
sensible use; a user who means it raises one for a run with an environment variable,
``PIXCADE_MAX_<NAME>=N`` (e.g. ``PIXCADE_MAX_RESOLUTION=8192``). docs/promises.md lists them.
"""

from __future__ import annotations

import os
from typing import Sequence

from pixcade.errors import PixcadeError

# name -> (default bound, what is counted)
LIMITS: dict[str, tuple[int, str]] = {
    "images": (100_000, "images in one run (prompts x images per prompt)"),
    "dataset_images": (10_000_000, "images in one dataset"),
    "batch": (65_536, "images per batch"),
    "resolution": (4096, "pixels per image side"),
    "prompt_chars": (10_000, "characters in one prompt"),
    "steps": (10_000, "sampling steps per stage"),
}


def limit(name: str) -> int:
    """The bound ``name``: its default, or ``PIXCADE_MAX_<NAME>`` when set."""
    default, _ = LIMITS[name]
    var = f"PIXCADE_MAX_{name.upper()}"
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise PixcadeError(f"{var} must be a positive integer, got {raw!r}")
    return value


def check_limit(name: str, value: int, what: str) -> None:
    """Refuse ``value`` (``what``: how the user gave it, e.g. "--n 1000 x 5 prompts") above
    the bound ``name``, saying how to raise it."""
    bound = limit(name)
    if value > bound:
        raise PixcadeError(
            f"{what} is {value}, above the limit of {bound} {LIMITS[name][1]}; if you mean it, "
            f"raise the limit with PIXCADE_MAX_{name.upper()}={value}"
        )


def check_generation(prompts: Sequence[str], n: int, batch_size: int | None) -> None:
    """The bounds of one generation request (CLI and Python API alike)."""
    check_limit("images", len(prompts) * n, f"{n} image(s) per prompt x {len(prompts)} prompt(s)")
    if batch_size is not None:
        check_limit("batch", batch_size, "the batch size")
    for i, prompt in enumerate(prompts):
        check_limit("prompt_chars", len(prompt), f"the length of prompt {i + 1}")
