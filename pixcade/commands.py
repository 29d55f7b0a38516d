"""Every `pixcade` verb, and what they share: one argument parser with one error style, the
dispatch of the table of verbs, JSON results.

A verb is a function ``main(argv: list[str]) -> int`` in the module that owns its idea; it
parses with `ArgumentParser` and calls the library, nothing more. **Adding a verb is one row
of `COMMANDS`**: ``"name": ("module:function", "help")``. The module is imported only when
the verb runs (`pixcade --help` stays fast, and one area's import error cannot break
another's); the help is the parser's description too.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any, Callable, NoReturn, Union

from pixcade.errors import PixcadeError
from pixcade.io import atomic_write_text

# ("module:function", one-line help), or a table of sub-verbs (`pixcade eval fid`). In a
# table, the verb "" runs when the first argument names no other (`pixcade train --config`).
Verb = tuple[str, str]
Verbs = dict[str, Union[Verb, "Verbs"]]

COMMANDS: Verbs = {
    "generate": ("pixcade.pipeline.cli:main", "generate images from prompts with a cascade"),
    "train": {
        "": ("pixcade.train.cli:main", "train one stage of a cascade"),
        "export": ("pixcade.train.cli:export_main", "write a run's checkpoint as a stage export"),
        "grow": ("pixcade.train.cli:grow_main", "grow a base stage export by one full-resolution level"),
    },
    "distill": ("pixcade.train.cli:distill_main",
                "distil a trained stage: guidance into one pass, then halved step counts"),
    "assemble": ("pixcade.pipeline.assemble_cli:main", "combine trained stage exports into a cascade directory"),
    "embed": ("pixcade.text.cli:main", "precompute text embeddings for a dataset's captions"),
    "data": {
        "shapes": ("pixcade.data.cli:shapes_main", "write a shapes dataset (images, captions, scenes)"),
        "emoji": ("pixcade.data.emoji.cli:main", "build the emoji dataset from its six pinned npm packages"),
        "emoji-audit": ("pixcade.data.emoji.cli:audit_main", "check a built emoji dataset trains on no held-out row"),
    },
    "eval": {
        "fid": ("pixcade.eval.cli:fid_main", "FID (and with --kid, KID) between a real and a generated image set"),
        "kid": ("pixcade.eval.cli:kid_main", "KID between a real and a generated image set"),
        "clip-score": ("pixcade.eval.cli:clip_score_main", "CLIP score of images against their prompts"),
        "shapes": ("pixcade.eval.cli:shapes_main",
                   "the compositional benchmark on the shapes domain: per scene kind, seen vs held-out pairs"),
        "sr-psnr": ("pixcade.eval.cli:sr_psnr_main",
                    "a super-resolution stage given the true low-res shapes render: PSNR vs bicubic upsampling"),
        "grid": ("pixcade.eval.cli:grid_main",
                 "a labelled PNG of prompts and each stage's image (base and final), e.g. for the README"),
        "train-shapes-features": ("pixcade.eval.cli:train_shapes_features_main",
                                  "train pixcade's shapes-domain feature CNN (for --features shapes:FILE)"),
        "emoji": {
            "train": ("pixcade.eval.emoji_cli:train_main", "train the emoji judge"),
            "generated": ("pixcade.eval.emoji_cli:generated_main", "judge generated images of held-out prompts"),
            "sr": ("pixcade.eval.emoji_cli:sr_main", "SR stage vs bicubic on held-out rows"),
            "sweep": ("pixcade.eval.emoji_cli:sweep_main", "a grid of sampling settings judged on held-out prompts"),
            "grid": ("pixcade.eval.emoji_cli:grid_main", "held-out prompts, each stage's image, a real reference"),
        },
    },
    "drawbench": {
        "generate": ("pixcade.eval.drawbench_cli:generate_main",
                     "write N images per prompt per model for side-by-side rating"),
        "rate": ("pixcade.eval.drawbench_cli:rate_main", "serve the blind rating page"),
        "report": ("pixcade.eval.drawbench_cli:report_main", "per-category preference rates with 95% intervals"),
    },
    "serve": ("pixcade.serve.cli:main", "serve a web page and HTTP API for generation"),
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors raise `PixcadeError`, so every verb's bad input ends the same
    way: one line `pixcade VERB: error: ...` and exit status 2 (see `pixcade.cli.main`).
    ``prog`` is the verb's full name; its description defaults to the verb's help."""

    def __init__(self, prog: str, **kwargs: Any):
        kwargs.setdefault("description", describe(prog))
        super().__init__(prog=prog, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise PixcadeError(message)


def run(verbs: Verbs, argv: list[str], prog: str = "pixcade") -> int:
    """Run the verb that ``argv`` names in ``verbs`` with the rest of ``argv``."""
    entry = verbs.get(argv[0]) if argv and argv[0] else None
    if entry is not None:
        if isinstance(entry, dict):
            return run(entry, argv[1:], f"{prog} {argv[0]}")
        return int(load(entry[0])(argv[1:]) or 0)
    if "" in verbs:
        return int(load(verbs[""][0])(argv) or 0)  # type: ignore[index]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(verbs, prog))
        return 0 if argv else 2
    raise PixcadeError(f"unknown command {argv[0]!r} (choose from {', '.join(v for v in verbs if v)})")


def verb_path(verbs: Verbs, argv: list[str], prog: str = "pixcade") -> str:
    """The verbs ``argv`` names, as a program name: "pixcade eval fid"."""
    while argv and argv[0] and isinstance(verbs.get(argv[0]), dict):
        prog, verbs, argv = f"{prog} {argv[0]}", verbs[argv[0]], argv[1:]  # type: ignore[assignment]
    return f"{prog} {argv[0]}" if argv and argv[0] in verbs and argv[0] else prog


def describe(prog: str) -> str | None:
    """The help of the verb ``prog`` names ("pixcade eval grid"), or None."""
    entry: Verbs | Verb = COMMANDS
    for word in prog.split()[1:]:
        if not isinstance(entry, dict) or word not in entry:
            return None
        entry = entry[word]
    if isinstance(entry, dict):
        entry = entry.get("", ("", ""))
    return entry[1] or None


def usage(verbs: Verbs, prog: str) -> str:
    width = max(len(v) for v in verbs) + 2
    lines = [f"usage: {prog} COMMAND [options]", "", "commands:"]
    for name, entry in verbs.items():
        if name:
            text = entry[1] if isinstance(entry, tuple) else ", ".join(v for v in entry if v)
            lines.append(f"  {name:<{width}}{text}")
    lines += ["", f"`{prog} COMMAND --help` for a command's options."]
    return "\n".join(lines)


def load(target: str) -> Callable[[list[str]], int]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function or "main")


def emit_json(result: dict, out: str | Path | None) -> None:
    """Print a verb's JSON result; with ``out``, also write it there (atomically)."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out), text + "\n")
