"""`pixcade` console entry point.

Each subcommand lives in the module that owns its idea and exposes
``main(argv: list[str]) -> int``; this file only dispatches, importing lazily so
that `pixcade --help` stays fast and one area's import error can't break another's.
"""

from __future__ import annotations

import importlib
import sys

from pixcade.errors import PixcadeError

# name -> (module exposing main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("pixcade.pipeline.cli", "generate images from prompts with a cascade"),
    "train": ("pixcade.train.cli", "train one stage of a cascade (`pixcade train export`: a checkpoint)"),
    "assemble": ("pixcade.pipeline.assemble_cli", "combine trained stage exports into a cascade directory"),
    "embed": ("pixcade.text.cli", "precompute text embeddings for a dataset's captions"),
    "data": ("pixcade.data.cli", "make datasets (e.g. `pixcade data shapes`)"),
    "eval": ("pixcade.eval.cli", "evaluate: fid, kid, clip-score, shapes, sr-psnr, grid"),
    "drawbench": ("pixcade.eval.drawbench", "DrawBench: generate image sets, rate them side by side"),
    "serve": ("pixcade.serve.cli", "serve a web page and HTTP API for generation"),
}


def _usage() -> str:
    lines = ["usage: pixcade COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`pixcade COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from pixcade import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"pixcade: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except PixcadeError as err:
        print(f"pixcade {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pixcade {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
