"""Resumable streamable-HTTP streams: the SDK's ``EventStore``, bounded, in memory.

With an event store the SDK gives every SSE event an id, opens each POST stream with a priming
event and honours ``Last-Event-ID`` on a reconnecting GET: a client whose connection dropped
gets the messages it missed instead of waiting for a reply that was already sent (SEP-1699).

The events live in this process only and are bounded by count and by bytes, oldest dropped
first: a client that reconnects after its events were dropped (or to another process) gets no
replay, and re-reads what it needs (``wait_for_change`` with its cursor never loses a change).
Nothing is written to disk: replies may carry state.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import mcp_types as types
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId

__all__ = ["BoundedEventStore"]

DEFAULT_MAX_EVENTS = 10_000
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


class BoundedEventStore(EventStore):
    """The last ``max_events`` events, at most ``max_bytes`` of JSON, across all streams."""

    def __init__(self, *, max_events: int = DEFAULT_MAX_EVENTS, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._ids = itertools.count(1)
        self._events: OrderedDict[EventId, tuple[StreamId, types.JSONRPCMessage | None, int]] = OrderedDict()
        self._bytes = 0

    async def store_event(self, stream_id: StreamId, message: types.JSONRPCMessage | None) -> EventId:
        event_id = str(next(self._ids))
        size = 0 if message is None else len(message.model_dump_json(by_alias=True, exclude_unset=True))
        self._events[event_id] = (stream_id, message, size)
        self._bytes += size
        while self._events and (len(self._events) > self.max_events or self._bytes > self.max_bytes):
            _, (_, _, dropped) = self._events.popitem(last=False)
            self._bytes -= dropped
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        found = self._events.get(last_event_id)
        if found is None:
            return None
        stream_id = found[0]
        after = False
        for event_id, (stream, message, _) in list(self._events.items()):
            if after and stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
            after = after or event_id == last_event_id
        return stream_id
