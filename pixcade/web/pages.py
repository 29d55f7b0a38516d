"""A server's page: ``/`` is DIR/index.html and ``/static/NAME`` the other files of DIR.

Served with ``Cache-Control: no-cache`` (the browser revalidates by ETag), so a page
changed by an upgrade is never run from a stale cache against a newer API.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

NO_CACHE = {"Cache-Control": "no-cache"}


class _Revalidated(StaticFiles):
    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope,
                      status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(NO_CACHE)
        return response


def page_routes(directory: Any) -> list[BaseRoute]:
    """Routes for a page kept in ``directory`` (a path or an importlib resources folder)."""
    index = str(directory / "index.html")

    async def page(request: Request) -> Response:
        return FileResponse(index, headers=NO_CACHE)

    return [Route("/", page), Mount("/static", _Revalidated(directory=str(directory)))]
