"""The one exception type users see: a bad input, named, without a traceback."""

from __future__ import annotations


class PixcadeError(ValueError):
    """A problem with what the user asked for (bad argument, missing file, corrupt model).

    The CLI prints its message on one line and exits with status 2; library callers can
    catch it like any ValueError.
    """
