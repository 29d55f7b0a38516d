"""The refusal every route and guard raises: an HTTP status and a one-line reason."""

from __future__ import annotations

from typing import Any

from pixcade.errors import PixcadeError


class RequestError(PixcadeError):
    """A refused request: ``status`` is the HTTP status to answer with; ``limit``/``value``
    name the configured limit it hit (if any), so a client can show what to change."""

    def __init__(self, status: int, message: str, limit: str | None = None, value: Any = None):
        super().__init__(message)
        self.status = status
        self.limit = limit
        self.value = value

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": str(self)}
        if self.limit is not None:
            body["limit"] = self.limit
            body["max"] = self.value
        return body
