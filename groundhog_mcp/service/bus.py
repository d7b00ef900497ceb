"""The in-process change bus: committed changes fan out to subscribers after commit.

Publishing never blocks a writer: each subscriber has a bounded queue; when it overflows
the subscriber is dropped to a *resync* marker carrying the last sequence it received,
and must read the change feed from there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from groundhog_mcp.models import Change

__all__ = ["ChangeBus", "Resync", "Subscription", "cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Stop a background follower task and wait until it has unwound."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@dataclass(frozen=True)
class Resync:
    """The subscriber fell behind; read the change feed after ``after_sequence``."""

    after_sequence: int


class Subscription:
    """One subscriber's bounded queue. Iterate it, or ``await get()``."""

    def __init__(self, bus: ChangeBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Change | Resync] = asyncio.Queue(maxsize)
        self._last_sequence = 0
        self._overflowed = False

    def _offer(self, change: Change) -> None:
        if self._overflowed:
            return
        try:
            self._queue.put_nowait(change)
            self._last_sequence = change.sequence
        except asyncio.QueueFull:
            self._overflowed = True
            # Make room for the marker: the reader resyncs from the feed anyway.
            self._queue.get_nowait()
            self._queue.put_nowait(Resync(self._last_sequence))

    async def get(self) -> Change | Resync:
        item = await self._queue.get()
        if isinstance(item, Resync):
            self._overflowed = False
        return item

    def close(self) -> None:
        self._bus._subscribers.discard(self)  # pyright: ignore[reportPrivateUsage]

    def __aiter__(self) -> AsyncIterator[Change | Resync]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Change | Resync]:
        while True:
            yield await self.get()


class ChangeBus:
    """Fan-out of committed changes in ``sequence`` order to every subscriber."""

    def __init__(self, queue_size: int = 1000) -> None:
        self.queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self.last_sequence = 0

    def subscribe(self, maxsize: int | None = None) -> Subscription:
        subscription = Subscription(self, maxsize or self.queue_size)
        self._subscribers.add(subscription)
        return subscription

    def publish(self, change: Change) -> None:
        """Deliver a committed change to every subscriber (never blocks)."""
        self.last_sequence = max(self.last_sequence, change.sequence)
        for subscription in list(self._subscribers):
            subscription._offer(change)  # pyright: ignore[reportPrivateUsage]
