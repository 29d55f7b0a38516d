"""`pixcade` console entry point: runs the verb named in `pixcade.commands.COMMANDS`, and is
the one place a verb's error ends (one line; exit status 2 for bad input, 1 for a failing
file system or memory)."""

from __future__ import annotations

import sys

from pixcade import __version__
from pixcade.commands import COMMANDS, run, verb_path
from pixcade.errors import PixcadeError
from pixcade.io import os_error_line


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:
        print(__version__)
        return 0
    name = verb_path(COMMANDS, argv)  # what an error line is prefixed with
    try:
        return run(COMMANDS, argv)
    except PixcadeError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    # What a verb does not name itself is still one line: the file and the cause.
    except OSError as err:
        print(f"{name}: error: {os_error_line(err)}", file=sys.stderr)
        return 1
    except UnicodeDecodeError as err:
        print(f"{name}: error: a text file is not UTF-8 ({err})", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{name}: error: out of memory (ask for fewer or smaller images, "
              "or a smaller --batch-size)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
