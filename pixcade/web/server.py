"""Running an app: uvicorn on its h11 protocol, with the connection limits uvicorn lacks.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``), bounds header size
(``h11_max_incomplete_event_size``) and connections in all (``limit_concurrency``), but
has no deadline for a request to arrive (its issue #157): a connection that sends
nothing, or trickles its headers a byte at a time, would be held forever. `_Protocol`
adds that deadline and a cap on connections per client address; it is uvicorn's own
H11Protocol otherwise, selected through uvicorn's ``http=`` setting.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections import Counter
from typing import Any, Callable

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from pixcade.errors import PixcadeError
from pixcade.web.limits import WebLimits

log = logging.getLogger(__name__)


def _protocol(limits: WebLimits) -> type[H11Protocol]:
    per_client: Counter[str] = Counter()  # open connections per client address, this server's

    class _Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _client_key: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            key = self.client[0] if self.client else ""
            if per_client[key] >= limits.max_client_connections:
                log.warning("%s has %d connections open already; closing a new one", key, per_client[key])
                transport.close()
                return
            per_client[key] += 1
            self._client_key = key
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._client_key is not None:
                per_client[self._client_key] -= 1
                if not per_client[self._client_key]:
                    del per_client[self._client_key]
                self._client_key = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        def _waiting_for_request(self) -> bool:
            # Headers not complete yet, or a body the route did not read still coming in.
            their, ours = self.conn.their_state, self.conn.our_state
            return their is h11.IDLE or (their is h11.SEND_BODY and ours in (h11.DONE, h11.MUST_CLOSE))

        def _watch(self) -> None:
            if self.transport.is_closing() or not self._waiting_for_request():
                self._disarm()
            elif self._deadline is None:
                self._deadline = self.loop.call_later(limits.request_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing() and self._waiting_for_request():
                log.info("%s sent no complete request within %g s; closing the connection",
                         self._client_key, limits.request_timeout_s)
                self.transport.close()

    return _Protocol


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None] | None) -> None:
        super().__init__(config)
        self.on_stop = on_stop

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # First tell the app (its event streams end), then let uvicorn drain connections.
        if self.on_stop is not None:
            self.on_stop()
        await super().shutdown(sockets)


class WebServer:
    """An ASGI app on a bound, listening socket; `serve_forever` runs it until `close` or Ctrl-C.

    ``on_stop`` runs when shutdown begins (before uvicorn waits for open requests), so an
    app can end its long-lived responses and stop taking work.
    """

    def __init__(self, app: Any, host: str, port: int, limits: WebLimits,
                 on_stop: Callable[[], None] | None = None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host.strip("[]"), port))
            sock.listen(128)  # connections made before serving starts wait in the backlog
        except OSError as err:
            sock.close()
            raise PixcadeError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
        self.socket = sock
        self.server_address: tuple[str, int] = sock.getsockname()[:2]
        config = uvicorn.Config(
            app, http=_protocol(limits), loop="asyncio", lifespan="off", log_config=None, access_log=False,
            # No proxy in front: a local client's X-Forwarded-For must not choose its address.
            proxy_headers=False, server_header=False, timeout_keep_alive=max(1, round(limits.idle_timeout_s)),
            timeout_graceful_shutdown=max(1, round(limits.shutdown_timeout_s)),
            limit_concurrency=limits.max_connections, h11_max_incomplete_event_size=limits.max_header_bytes,
        )
        self._server = _Server(config, on_stop)
        self._done = threading.Event()
        self._serving = False

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve until `close` (from another thread) or Ctrl-C (in the main thread: uvicorn
        finishes open requests, then SIGINT is raised again, as KeyboardInterrupt)."""
        self._serving = True
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._done.set()

    def close(self, timeout: float = 30.0) -> None:
        """Stop serving (as Ctrl-C would) and wait for `serve_forever` to return; frees the port."""
        self._server.should_exit = True
        if self._serving:
            self._done.wait(timeout)
        self.socket.close()
