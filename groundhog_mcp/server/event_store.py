"""Resumable streamable-HTTP streams: the SDK's ``EventStore``, bounded, in memory, per session.

With an event store the SDK gives every SSE event an id, opens each POST stream with a priming
event and honours ``Last-Event-ID`` on a reconnecting GET: a client whose connection dropped
gets the messages it missed instead of waiting for a reply that was already sent (SEP-1699).

The SDK hands one event store to every session and names streams after JSON-RPC request ids,
which two sessions share ("1", "2", …). A store keyed by stream alone replays one session's
replies to any other session presenting a matching ``Last-Event-ID``. So the store here is
never used directly: :meth:`BoundedEventStore.for_session` gives each session its own view,
a view replays only its own events, and event ids are random — an id seen in one session says
nothing about another's and finds nothing there. Which session may reconnect is the SDK's
check: a session answers only the credential that opened it.

The events live in this process only and are bounded, oldest dropped first: in all by count
and bytes, and per session by a share of those, so one busy session cannot flush another's.
A client that reconnects after its events were dropped (or to another process) gets no replay,
and re-reads what it needs (``wait_for_change`` with its cursor never loses a change). Nothing
is written to disk: replies may carry state.
"""

from __future__ import annotations

import secrets
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import mcp_types as types
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

__all__ = ["BoundedEventStore", "SessionEventStore", "UnscopedEventStore", "scope_events_by_session"]

DEFAULT_MAX_EVENTS = 10_000
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
# One session may hold at most this share of the whole store.
_SESSION_SHARE = 4


@dataclass(frozen=True)
class _Event:
    stream: StreamId
    message: types.JSONRPCMessage | None
    size: int


@dataclass(eq=False)
class _SessionEvents:
    """What one session has stored, oldest first. Held by the session's view and by the shared
    store's arrival order, never referring back to the view: a view nobody uses can go away."""

    events: OrderedDict[EventId, _Event] = field(default_factory=OrderedDict[EventId, _Event])
    bytes: int = 0


class BoundedEventStore:
    """Events of every session, at most ``max_events`` and ``max_bytes`` of JSON in all.

    Not an ``EventStore`` itself: only a session's view (:meth:`for_session`) stores or replays.
    """

    def __init__(self, *, max_events: int = DEFAULT_MAX_EVENTS, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.session_max_events = max(1, max_events // _SESSION_SHARE)
        self.session_max_bytes = max(1, max_bytes // _SESSION_SHARE)
        # Global arrival order, for dropping the oldest event of any session.
        self._order: OrderedDict[EventId, _SessionEvents] = OrderedDict()
        self._bytes = 0

    def for_session(self) -> SessionEventStore:
        """A new session's view: it stores that session's events and replays only those."""
        session = _SessionEvents()
        view = SessionEventStore(self, session)
        # A session that ends (its transport dropped) takes its events with it.
        weakref.finalize(view, self._forget, session)
        return view

    @property
    def event_count(self) -> int:
        return len(self._order)

    @property
    def byte_count(self) -> int:
        return self._bytes

    def add(self, session: _SessionEvents, event: _Event) -> EventId:
        event_id = secrets.token_urlsafe(16)
        session.events[event_id] = event
        session.bytes += event.size
        self._order[event_id] = session
        self._bytes += event.size
        while session.events and (
            len(session.events) > self.session_max_events or session.bytes > self.session_max_bytes
        ):
            self._drop(next(iter(session.events)))
        while self._order and (len(self._order) > self.max_events or self._bytes > self.max_bytes):
            self._drop(next(iter(self._order)))
        return event_id

    def _drop(self, event_id: EventId) -> None:
        session = self._order.pop(event_id)
        event = session.events.pop(event_id)
        session.bytes -= event.size
        self._bytes -= event.size

    def _forget(self, session: _SessionEvents) -> None:
        for event_id in list(session.events):
            self._drop(event_id)


class SessionEventStore(EventStore):
    """One session's events: what the SDK's transport of that session stores and replays."""

    def __init__(self, shared: BoundedEventStore, session: _SessionEvents) -> None:
        self._shared = shared
        self._session = session

    async def store_event(self, stream_id: StreamId, message: types.JSONRPCMessage | None) -> EventId:
        size = 0 if message is None else len(message.model_dump_json(by_alias=True, exclude_unset=True))
        return self._shared.add(self._session, _Event(stream_id, message, size))

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        events = self._session.events
        found = events.get(last_event_id)
        if found is None:
            return None  # unknown here: dropped, never stored, or another session's
        stream_id = found.stream
        after = False
        for event_id, event in list(events.items()):
            if after and event.stream == stream_id and event.message is not None:
                await send_callback(EventMessage(event.message, event_id))
            after = after or event_id == last_event_id
        return stream_id


class UnscopedEventStore(EventStore):
    """What the SDK's session manager is given, so that it turns resumability on. Each session's
    transport gets its own view instead (:func:`scope_events_by_session`); were this one ever
    used, a session's events would be shared, so it refuses."""

    async def store_event(self, stream_id: StreamId, message: types.JSONRPCMessage | None) -> EventId:
        raise RuntimeError("event store used without a session: scope_events_by_session was not applied")

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        raise RuntimeError("event store used without a session: scope_events_by_session was not applied")


def scope_events_by_session(manager: StreamableHTTPSessionManager, store: BoundedEventStore) -> None:
    """Give every session ``manager`` opens its own view of ``store``.

    The SDK passes its one event store to each new session's transport; there is no public hook
    to pass one per session, so the manager's session admission is wrapped. Should the SDK's
    internals change, this raises at start-up rather than serving with a shared store (and the
    replay tests in tests/server/test_event_store.py pin the behaviour).
    """
    admit = getattr(manager, "_admit_session", None)
    if not callable(admit):
        raise RuntimeError("this MCP SDK's session manager has no _admit_session: cannot scope events by session")

    def admit_scoped(*args: object, **kwargs: object) -> object:
        transport = admit(*args, **kwargs)
        if transport is not None:
            if not isinstance(getattr(transport, "_event_store", None), UnscopedEventStore):
                raise RuntimeError("this MCP SDK's transport keeps its event store elsewhere: cannot scope it")
            setattr(transport, "_event_store", store.for_session())  # noqa: B010 (private attribute)
        return transport

    setattr(manager, "_admit_session", admit_scoped)  # noqa: B010 (private attribute)
