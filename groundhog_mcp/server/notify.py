"""Turns committed changes into MCP notifications for both protocol eras.

Handshake-era sessions (2024-11-05 … 2025-11-25) get ``notifications/resources/list_changed``
on their session; 2026-07-28 clients get the same event on their ``subscriptions/listen``
stream through the SDK's subscription bus.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import structlog
from mcp.server.connection import Connection
from mcp.server.subscriptions import ResourcesListChanged, ResourceUpdated, ServerEvent, SubscriptionBus

from groundhog_mcp.errors import ContextError
from groundhog_mcp.models import Change, Principal
from groundhog_mcp.server.path_watch import PathWatch, listen_uris, path_watches
from groundhog_mcp.server.principals import request_principal
from groundhog_mcp.service import ChangeBus, Resync
from groundhog_mcp.service.bus import cancel_and_wait

__all__ = [
    "MAX_PATH_SUBSCRIPTIONS",
    "NamespacedSubscriptionBus",
    "Notifier",
    "context_uris",
    "is_subscribable",
    "state_uri",
]

log = structlog.get_logger("groundhog_mcp.notify")

_LIST_CHANGING_OPS = frozenset({"register", "unregister", "import"})


MAX_PATH_SUBSCRIPTIONS = 100
"""Path URIs one connection (or listen stream) may watch: each is matched against every change."""


def state_uri(name: str) -> str:
    return f"groundhog://contexts/{name}/state"


def context_uris(name: str) -> tuple[str, str, str]:
    """The resources a change to context ``name`` updates."""
    base = f"groundhog://contexts/{name}"
    return base, f"{base}/state", f"{base}/history"


_SUBSCRIBABLE = re.compile(r"^groundhog://contexts/[A-Za-z0-9._-]{1,128}(/state|/history|/state\?path=[^#]{0,3100})?$")


def is_subscribable(uri: str) -> bool:
    return bool(_SUBSCRIBABLE.fullmatch(uri))


# A listen stream whose request named no usable principal hears nothing namespaced.
_NOWHERE = Principal(name="\x00nobody", namespace="\x00nowhere", grants=())


class NamespacedSubscriptionBus:
    """The SDK's in-process subscription bus, with each ``subscriptions/listen`` stream bound to
    the principal of the request that opened it (a bearer token's; None: the configured one).

    :meth:`publish` reaches every stream (what the SDK itself publishes); :meth:`publish_in`
    only the streams whose principal may read the context in question, so a client never hears
    of another namespace's contexts, nor of contexts its grants do not let it read.
    """

    def __init__(self) -> None:
        self._listeners: dict[object, tuple[Principal | None, Callable[[ServerEvent], None]]] = {}
        self._paths: dict[object, tuple[PathWatch, ...]] = {}  # listener -> the path URIs it asked for

    async def publish(self, event: ServerEvent) -> None:
        await self._deliver(event, lambda _: True)

    async def publish_in(
        self, namespace: str, event: ServerEvent, *, configured: str | Principal, name: str = ""
    ) -> None:
        """Deliver ``event`` to the streams that may read context ``name`` of ``namespace``
        (``configured``: the principal, or just the namespace, of streams opened without a token)."""

        def wanted(bound: Principal | None) -> bool:
            if bound is None:
                if isinstance(configured, str):
                    return configured == namespace
                bound = configured
            return bound.namespace == namespace and (not name or bound.allows("read", name))

        await self._deliver(event, wanted)

    async def publish_paths(self, change: Change, *, configured: str | Principal) -> None:
        """Tell each stream that may read ``change``'s context and listens to one of its path URIs
        (``…/state?path=…``) touched by the change."""
        for token, watches in list(self._paths.items()):
            entry = self._listeners.get(token)
            if entry is None:
                continue
            principal, listener = entry
            if principal is None:
                principal = Principal(namespace=configured) if isinstance(configured, str) else configured
            if not _reads(principal, change.namespace, change.name):
                continue
            for watch in watches:
                if watch.touched_by(change):
                    try:
                        listener(ResourceUpdated(uri=watch.uri))
                    except Exception:  # fan-out boundary: one bad listener must not starve the others
                        log.exception("subscription listener raised; continuing")

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        try:
            principal = request_principal()
        except ContextError:
            principal = _NOWHERE
        token = object()
        self._listeners[token] = (principal, listener)
        watches = path_watches(listen_uris.get()[:MAX_PATH_SUBSCRIPTIONS])
        if watches:
            self._paths[token] = watches

        def unsubscribe() -> None:
            self._listeners.pop(token, None)
            self._paths.pop(token, None)

        return unsubscribe

    async def _deliver(self, event: ServerEvent, wanted: Callable[[Principal | None], bool]) -> None:
        for principal, listener in list(self._listeners.values()):
            if not wanted(principal):
                continue
            try:
                listener(event)
            except Exception:  # fan-out boundary: one bad listener must not starve the others
                log.exception("subscription listener raised; continuing")
        await asyncio.sleep(0)  # let listen streams drain between events


class Notifier:
    """Follows the change bus and tells connected clients what changed, each client only about
    the contexts its principal may read (``principal``: the configured one, for clients without
    a token; ``namespace`` alone means all rights in it)."""

    def __init__(
        self,
        bus: ChangeBus,
        subscriptions: SubscriptionBus,
        *,
        namespace: str | None = None,
        principal: Principal | None = None,
    ) -> None:
        self._bus = bus
        self._subscriptions = subscriptions
        if principal is None:
            principal = Principal(namespace=namespace) if namespace else Principal()
        self._principal = principal
        self._namespace = self._principal.namespace
        self._connections: dict[Connection, Principal] = {}
        self._subscribed: dict[Connection, set[str]] = {}
        self._paths: dict[Connection, dict[str, PathWatch]] = {}  # path URIs among them, parsed once
        self._task: asyncio.Task[None] | None = None

    def track(self, connection: Connection, principal: Principal | None = None) -> None:
        """Remember a handshake-era client connection (until it closes) so it hears about changes
        that ``principal`` (None: the configured one) may read."""
        if connection in self._connections:
            return
        self._connections[connection] = principal or self._principal
        connection.exit_stack.callback(self._forget, connection)

    def _forget(self, connection: Connection) -> None:
        self._connections.pop(connection, None)
        self._subscribed.pop(connection, None)
        self._paths.pop(connection, None)

    def subscribe(self, connection: Connection, uri: str, principal: Principal | None = None) -> None:
        """``resources/subscribe`` (2024-11-05 … 2025-11-25): tell this connection when ``uri`` changes."""
        self.track(connection, principal)
        self._subscribed.setdefault(connection, set()).add(uri)
        for watch in path_watches((uri,)):
            self._paths.setdefault(connection, {})[uri] = watch

    def unsubscribe(self, connection: Connection, uri: str) -> None:
        self._subscribed.get(connection, set()).discard(uri)
        self._paths.get(connection, {}).pop(uri, None)

    def path_subscriptions(self, connection: Connection) -> int:
        """Path URIs (``…/state?path=…``) this connection is subscribed to."""
        return len(self._paths.get(connection, {}))

    def subscription_count(self, namespace: str | None = None) -> int:
        """Open resource subscriptions (of connections in ``namespace``, when given)."""
        return sum(
            len(uris)
            for connection, uris in self._subscribed.items()
            if namespace is None or self._namespace_of(connection) == namespace
        )

    def _namespace_of(self, connection: Connection) -> str | None:
        principal = self._connections.get(connection)
        return principal.namespace if principal is not None else None

    async def start(self) -> None:
        subscription = self._bus.subscribe()
        self._task = asyncio.create_task(self._run(subscription), name="groundhog-notifier")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self, subscription: Any) -> None:
        try:
            while True:
                item = await subscription.get()
                if isinstance(item, Resync):
                    await self._list_changed()
                    continue
                await self._deliver(item)
        finally:
            subscription.close()

    async def _deliver(self, change: Change) -> None:
        # Never tell a client about a context it cannot see: only changes its principal may read.
        if change.op in _LIST_CHANGING_OPS:
            await self._list_changed(change.namespace, change.name)
        uris = context_uris(change.name)
        for uri in uris:
            await self._publish(change.namespace, ResourceUpdated(uri=uri), change.name)
        if isinstance(self._subscriptions, NamespacedSubscriptionBus):
            await self._subscriptions.publish_paths(change, configured=self._principal)
        for connection, subscribed in list(self._subscribed.items()):
            if not _reads(self._connections.get(connection), change.namespace, change.name):
                continue
            touched = [w.uri for w in self._paths.get(connection, {}).values() if w.touched_by(change)]
            for uri in (*uris, *touched):
                if uri in subscribed:
                    try:
                        await connection.send_resource_updated(uri)
                    except Exception:  # a closed connection must not stop delivery to the others
                        self._forget(connection)
                        log.debug("dropped a closed connection from notifications", exc_info=True)
                        break

    async def _publish(self, namespace: str, event: ServerEvent, name: str) -> None:
        if isinstance(self._subscriptions, NamespacedSubscriptionBus):
            await self._subscriptions.publish_in(namespace, event, configured=self._principal, name=name)
        elif _reads(self._principal, namespace, name):  # a plain bus cannot tell its listeners apart
            await self._subscriptions.publish(event)

    async def _list_changed(self, namespace: str | None = None, name: str = "") -> None:
        """Tell the clients that may read context ``name`` of ``namespace`` (None: every client,
        after a resync) that the list of resources changed."""
        if namespace is None:
            await self._subscriptions.publish(ResourcesListChanged())
        else:
            await self._publish(namespace, ResourcesListChanged(), name)
        for connection, bound in list(self._connections.items()):
            if namespace is not None and not _reads(bound, namespace, name):
                continue
            try:
                await connection.send_resource_list_changed()
            except Exception:  # a closed connection must not stop delivery to the others
                self._connections.pop(connection, None)
                log.debug("dropped a closed connection from notifications", exc_info=True)


def _reads(principal: Principal | None, namespace: str, name: str) -> bool:
    return principal is not None and principal.namespace == namespace and principal.allows("read", name)
