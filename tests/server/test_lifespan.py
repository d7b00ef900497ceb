"""One application context per server, however often a transport enters the lifespan.

The legacy SSE transport enters the server lifespan once per client connection. Each entry
used to start its own notifier on the shared subscription bus, so every ``subscriptions/listen``
stream heard each change once per connected client.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import anyio
from mcp.server.subscriptions import ResourceUpdated, ServerEvent

from groundhog_mcp import StateManager
from groundhog_mcp.app import Settings, create_server
from groundhog_mcp.server import AppContext
from groundhog_mcp.server.notify import NamespacedSubscriptionBus


async def test_lifespan_entered_per_connection_shares_one_notifier(db_path: Path) -> None:
    async with StateManager.open(db_path) as manager:
        server = create_server(Settings(database=str(db_path), tools="all"), manager)
        lowlevel = server._lowlevel_server  # pyright: ignore[reportPrivateUsage]
        connections = [AsyncExitStack() for _ in range(3)]  # three SSE clients connected at once
        contexts: list[AppContext] = [await c.enter_async_context(lowlevel.lifespan(lowlevel)) for c in connections]
        try:
            assert contexts[0] is contexts[1] is contexts[2]
            assert len(manager.bus._subscribers) == 1  # pyright: ignore[reportPrivateUsage]

            bus = contexts[0].notifier._subscriptions  # pyright: ignore[reportPrivateUsage]
            assert isinstance(bus, NamespacedSubscriptionBus)
            heard: list[str] = []
            marker = anyio.Event()

            def listener(event: ServerEvent) -> None:
                if isinstance(event, ResourceUpdated):
                    heard.append(event.uri)
                    if event.uri == "groundhog://contexts/marker/state":
                        marker.set()

            unsubscribe = bus.subscribe(listener)
            await manager.register("watched")
            await manager.register("marker")
            with anyio.fail_after(10):
                await marker.wait()
            unsubscribe()
            assert heard.count("groundhog://contexts/watched/state") == 1
            assert heard.count("groundhog://contexts/marker/state") == 1

            # Two of three clients leave: the notifier keeps serving the third.
            await connections[0].aclose()
            await connections[1].aclose()
            assert len(manager.bus._subscribers) == 1  # pyright: ignore[reportPrivateUsage]
        finally:
            for connection in connections:
                await connection.aclose()
        assert len(manager.bus._subscribers) == 0  # pyright: ignore[reportPrivateUsage]
        async with lowlevel.lifespan(lowlevel) as again:
            assert again is not contexts[0]
            assert len(manager.bus._subscribers) == 1  # pyright: ignore[reportPrivateUsage]
