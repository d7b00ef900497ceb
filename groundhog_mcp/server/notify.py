"""Turns committed changes into MCP notifications for both protocol eras.

Handshake-era sessions (2024-11-05 … 2025-11-25) get ``notifications/resources/list_changed``
on their session; 2026-07-28 clients get the same event on their ``subscriptions/listen``
stream through the SDK's subscription bus.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import structlog
from mcp.server.connection import Connection
from mcp.server.subscriptions import ResourcesListChanged, ResourceUpdated, SubscriptionBus

from groundhog_mcp.models import Change
from groundhog_mcp.service import ChangeBus, Resync
from groundhog_mcp.service.bus import cancel_and_wait

__all__ = ["Notifier", "context_uris", "is_subscribable", "state_uri"]

log = structlog.get_logger("groundhog_mcp.notify")

_LIST_CHANGING_OPS = frozenset({"register", "unregister", "import"})


def state_uri(name: str) -> str:
    return f"groundhog://contexts/{name}/state"


def context_uris(name: str) -> tuple[str, str, str]:
    """The resources a change to context ``name`` updates."""
    base = f"groundhog://contexts/{name}"
    return base, f"{base}/state", f"{base}/history"


_SUBSCRIBABLE = re.compile(r"^groundhog://contexts/[A-Za-z0-9._-]{1,128}(/state|/history)?$")


def is_subscribable(uri: str) -> bool:
    return bool(_SUBSCRIBABLE.fullmatch(uri))


class Notifier:
    """Follows the change bus and tells connected clients what changed."""

    def __init__(self, bus: ChangeBus, subscriptions: SubscriptionBus, *, namespace: str) -> None:
        self._bus = bus
        self._subscriptions = subscriptions
        self._namespace = namespace
        self._connections: set[Connection] = set()
        self._subscribed: dict[Connection, set[str]] = {}
        self._task: asyncio.Task[None] | None = None

    def track(self, connection: Connection) -> None:
        """Remember a handshake-era client connection (until it closes) so it hears about changes."""
        if connection in self._connections:
            return
        self._connections.add(connection)
        connection.exit_stack.callback(self._forget, connection)

    def _forget(self, connection: Connection) -> None:
        self._connections.discard(connection)
        self._subscribed.pop(connection, None)

    def subscribe(self, connection: Connection, uri: str) -> None:
        """``resources/subscribe`` (2024-11-05 … 2025-11-25): tell this connection when ``uri`` changes."""
        self.track(connection)
        self._subscribed.setdefault(connection, set()).add(uri)

    def unsubscribe(self, connection: Connection, uri: str) -> None:
        self._subscribed.get(connection, set()).discard(uri)

    def subscription_count(self) -> int:
        return sum(len(uris) for uris in self._subscribed.values())

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
        if change.namespace != self._namespace:
            return  # never tell a client about a context it cannot see
        if change.op in _LIST_CHANGING_OPS:
            await self._list_changed()
        uris = context_uris(change.name)
        for uri in uris:
            await self._subscriptions.publish(ResourceUpdated(uri=uri))
        for connection, subscribed in list(self._subscribed.items()):
            for uri in uris:
                if uri in subscribed:
                    try:
                        await connection.send_resource_updated(uri)
                    except Exception:  # a closed connection must not stop delivery to the others
                        self._forget(connection)
                        log.debug("dropped a closed connection from notifications", exc_info=True)
                        break

    async def _list_changed(self) -> None:
        await self._subscriptions.publish(ResourcesListChanged())
        for connection in list(self._connections):
            try:
                await connection.send_resource_list_changed()
            except Exception:  # a closed connection must not stop delivery to the others
                self._connections.discard(connection)
                log.debug("dropped a closed connection from notifications", exc_info=True)
