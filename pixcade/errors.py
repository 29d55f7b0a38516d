"""The one exception type users see: a bad input, named, without a traceback."""

from __future__ import annotations

import dataclasses
from typing import Any


class PixcadeError(ValueError):
    """A problem with what the user asked for (bad argument, missing file, corrupt model).

    The CLI prints its message on one line and exits with status 2; library callers can
    catch it like any ValueError.
    """


def check_known_keys(cls: type, d: dict[str, Any], what: str) -> None:
    """Refuse keys of ``d`` that are no field of the dataclass ``cls`` (a misspelt config
    option must not be silently ignored): "<what> has unknown keys: [...]"."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise PixcadeError(f"{what} has unknown keys: {sorted(unknown)}")
