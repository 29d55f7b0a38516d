"""A group of `pixcade` verbs as a function, for tests: errors raise (no exit status)."""

from __future__ import annotations

from typing import Callable

from pixcade.cli import COMMANDS
from pixcade.commands import run


def verbs(group: str) -> Callable[[list[str]], int]:
    """``verbs("eval")(["fid", ...])`` runs `pixcade eval fid ...`, letting a PixcadeError out."""
    return lambda argv: run(COMMANDS[group], argv, f"pixcade {group}")
