"""Path subscriptions: ``groundhog://contexts/{name}/state?path=/data/plan``.

A state resource with a ``path`` query names one part of a context's state (a JSON Pointer into
the state document). Reading it returns that part; subscribing to it, in either protocol era
(``resources/subscribe`` or a ``subscriptions/listen`` filter), is told of a change only when the
change touches the path, an ancestor or a descendant (``service.paths.touches``), so a watcher
of one part of a large state is not woken by writes elsewhere.

For the 2026-07-28 era the URIs a listen stream asked for are known only to the SDK's listen
handler: :func:`capture_listen_uris` (middleware) puts them in a context variable for the
duration of the request, where the subscription bus reads them when the handler subscribes.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext

from groundhog_mcp.errors import ContextError
from groundhog_mcp.models import Change, check_name
from groundhog_mcp.service.paths import parse_watch_paths, touches

__all__ = ["PathWatch", "capture_listen_uris", "listen_uris", "parse_path_uri", "path_uri", "path_watches"]

_PREFIX = "groundhog://contexts/"
_QUERY = "/state?path="

listen_uris: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("groundhog_listen_uris", default=())


@dataclass(frozen=True)
class PathWatch:
    """A subscribed path URI: the context it watches and the pointer's tokens."""

    uri: str
    name: str
    watched: tuple[tuple[str, ...], ...]

    def touched_by(self, change: Change) -> bool:
        return change.name == self.name and touches(change, self.watched)


def path_uri(name: str, pointer: str) -> str:
    """The resource URI of the part of context ``name``'s state at ``pointer``."""
    return f"{_PREFIX}{name}{_QUERY}{quote(pointer, safe='/~')}"


def parse_path_uri(uri: str) -> PathWatch | None:
    """The watch a path URI names; None for any other URI. A bad name or pointer raises the
    :class:`~groundhog_mcp.errors.ContextError` that names the rule."""
    if not uri.startswith(_PREFIX) or _QUERY not in uri:
        return None
    name, _, pointer = uri[len(_PREFIX) :].partition(_QUERY)
    check_name(name)
    watched = parse_watch_paths([unquote(pointer)], field="path")
    assert watched is not None  # one pointer given
    return PathWatch(uri, name, watched)


def path_watches(uris: Iterable[str]) -> tuple[PathWatch, ...]:
    """The path URIs among ``uris`` (bad ones are left out: they can never fire)."""
    found: list[PathWatch] = []
    for uri in uris:
        try:
            watch = parse_path_uri(uri)
        except (ContextError, ValueError):
            continue
        if watch is not None:
            found.append(watch)
    return tuple(found)


async def capture_listen_uris(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Middleware: during a ``subscriptions/listen`` request, :data:`listen_uris` holds the
    resource URIs its filter names (the bus reads them when the listen handler subscribes)."""
    if ctx.method != "subscriptions/listen":
        return await call_next(ctx)
    notifications = (ctx.params or {}).get("notifications")
    uris = notifications.get("resourceSubscriptions") if isinstance(notifications, dict) else None
    wanted = tuple(str(u) for u in uris if isinstance(u, str)) if isinstance(uris, list) else ()
    token = listen_uris.set(wanted)
    try:
        return await call_next(ctx)
    finally:
        listen_uris.reset(token)
