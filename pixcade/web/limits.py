"""The limits both web servers apply to every client, and the Host names each answers."""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass, fields
from typing import Sequence

from pixcade.errors import PixcadeError

LOOPBACK_NAMES = ("localhost", "*.localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True)
class WebLimits:
    """Per-connection and per-client limits (seconds, bytes, counts); all must be positive.

    ``request_timeout_s``: a connection must deliver each request's headers within this long
    of opening (or of the previous response); a body must arrive within it once the route
    starts reading it. ``idle_timeout_s``: an idle keep-alive connection is closed after it.
    ``max_client_connections`` / ``max_client_requests``: open connections / requests in
    progress (event streams included) per client address; ``max_connections``: in all.
    """

    request_timeout_s: float = 10.0
    idle_timeout_s: float = 5.0
    shutdown_timeout_s: float = 5.0
    max_header_bytes: int = 16 * 1024
    max_json_depth: int = 32
    max_number_chars: int = 100
    max_client_connections: int = 64
    max_client_requests: int = 32
    max_connections: int = 512

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise PixcadeError(f"{f.name} must be positive, got {getattr(self, f.name)}")


def is_loopback(host: str) -> bool:
    """Whether a host name or address (IPv6 with or without brackets) is this machine's loopback."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(bind: str, extra: Sequence[str] = ()) -> list[str]:
    """The Host header names a server listening on ``bind`` answers.

    Always the loopback names; a specific address it listens on; and the names the user
    listed (``extra``: what other machines call this one, ``*.example.org`` patterns, or
    ``*`` for any name). Any other name is refused: a page on evil.example that rebinds
    its DNS name to this machine still says ``Host: evil.example``.
    """
    names = list(LOOPBACK_NAMES)
    address = bind.strip("[]")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        names.append(bind.lower())  # a name to listen on is a name clients use
    else:
        if not ip.is_unspecified:
            names.append(f"[{ip}]" if ip.version == 6 else str(ip))
    for name in extra:
        name = name.strip().lower()
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(name.strip("[]")).version == 6:
                name = f"[{name.strip('[]')}]"
        wildcard_ok = name == "*" or (name.startswith("*.") and "*" not in name[1:]) or "*" not in name
        if not name or "/" in name or not wildcard_ok:
            raise PixcadeError(f"--allow-host {name!r}: give a host name, an address, *.domain or *")
        names.append(name)
    return list(dict.fromkeys(names))
