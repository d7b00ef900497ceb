"""Turns committed changes into MCP notifications for both protocol eras.

Handshake-era sessions (2024-11-05 … 2025-11-25) get ``notifications/resources/list_changed``
on their session; 2026-07-28 clients get the same event on their ``subscriptions/listen``
stream through the SDK's subscription bus.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from mcp.server.connection import Connection
from mcp.server.subscriptions import ResourcesListChanged, ResourceUpdated, SubscriptionBus

from groundhog_mcp.models import Change
from groundhog_mcp.service import ChangeBus, Resync

__all__ = ["Notifier", "state_uri"]

log = structlog.get_logger("groundhog_mcp.notify")

_LIST_CHANGING_OPS = frozenset({"register", "unregister", "import"})


def state_uri(name: str) -> str:
    return f"groundhog://contexts/{name}/state"


class Notifier:
    """Follows the change bus and tells connected clients what changed."""

    def __init__(self, bus: ChangeBus, subscriptions: SubscriptionBus) -> None:
        self._bus = bus
        self._subscriptions = subscriptions
        self._connections: set[Connection] = set()
        self._task: asyncio.Task[None] | None = None

    def track(self, connection: Connection) -> None:
        """Remember a handshake-era client connection (until it closes) so it hears about changes."""
        if connection in self._connections:
            return
        self._connections.add(connection)
        connection.exit_stack.callback(self._connections.discard, connection)

    async def start(self) -> None:
        subscription = self._bus.subscribe()
        self._task = asyncio.create_task(self._run(subscription), name="groundhog-notifier")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
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
        if change.op in _LIST_CHANGING_OPS:
            await self._list_changed()
        await self._subscriptions.publish(ResourceUpdated(uri=state_uri(change.name)))

    async def _list_changed(self) -> None:
        await self._subscriptions.publish(ResourcesListChanged())
        for connection in list(self._connections):
            try:
                await connection.send_resource_list_changed()
            except Exception:  # a closed connection must not stop delivery to the others
                self._connections.discard(connection)
                log.debug("dropped a closed connection from notifications", exc_info=True)
