"""Host and Origin checks against DNS rebinding, shared by ``/mcp`` and the dashboard (which
runs without the MCP SDK): a bad Host is answered 421, a bad Origin 403."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import structlog

from groundhog_mcp.errors import InitializationError

__all__ = [
    "LOCALHOST_NAMES",
    "allowed_hosts",
    "authority",
    "bind_socket",
    "host_origin_refusal",
    "is_loopback",
    "is_unspecified",
    "matches",
    "origins_of",
]

log = structlog.get_logger("groundhog_mcp.http")

LOCALHOST_NAMES = ("127.0.0.1", "localhost", "[::1]")
_MAX_SHOWN_HEADER = 200


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def authority(host: str, port: int) -> str:
    """``host:port`` as a Host header spells it (IPv6 in brackets)."""
    bare = host.strip("[]")
    return f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"


def allowed_hosts(host: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """The Host headers a server bound to ``host:port`` answers: the localhost forms and the bind
    address with the port, and ``extra``."""
    hosts = [authority(name, port) for name in LOCALHOST_NAMES]
    if not is_unspecified(host):
        hosts.append(authority(host, port))
    return list(dict.fromkeys([*hosts, *extra]))


def origins_of(hosts: list[str]) -> list[str]:
    """``http://`` and ``https://`` of every allowed host."""
    return [f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")]


def matches(value: str, allowed: list[str]) -> bool:
    """The SDK's rule: an exact entry, or ``base:*`` for ``base`` with any port."""
    if value in allowed:
        return True
    return any(entry.endswith(":*") and value.startswith(entry[:-1]) for entry in allowed)


def host_origin_refusal(
    host: str | None, origin: str | None, hosts: list[str], origins: list[str]
) -> tuple[int, str] | None:
    """``(status, text)`` to answer a request with these headers, or None to serve it."""
    if not host or not matches(host, hosts):
        shown = repr((host or "")[:_MAX_SHOWN_HEADER])
        log.warning("refused a request with a bad Host header", host=shown)
        return 421, (
            f"Misdirected request: Host {shown} is not one this server answers to "
            "(configure allowed_hosts / --allowed-host)"
        )
    if origin and not matches(origin, origins):
        shown = repr(origin[:_MAX_SHOWN_HEADER])
        log.warning("refused a request with a bad Origin header", origin=shown)
        return 403, f"Forbidden: Origin {shown} is not allowed (configure allowed_origins / --allowed-origin)"
    return None


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port), made before the database
    opens so that a busy port fails fast."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it Nagle holds back the second small write of an SSE event for a delayed ACK (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bare, port))
        # Listening at once: a client that connects while the server is still starting waits
        # in the backlog instead of being refused.
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InitializationError(f"port: cannot listen on {authority(host, port)} ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock
