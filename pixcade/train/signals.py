"""Turn Ctrl-C / SIGTERM into a request to stop at the next step boundary."""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopRequest:
    """While active, SIGINT and SIGTERM set `reason` instead of killing the process, so
    the trainer can finish its step, write a checkpoint and exit. A second Ctrl-C while a
    stop is pending raises KeyboardInterrupt (the user really means it)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # only it may set handlers
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.reason is not None
