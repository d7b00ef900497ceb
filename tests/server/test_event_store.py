"""Resumable streamable HTTP: the bounded event store, and what the server sends with it."""

from __future__ import annotations

import gc
import json
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp.server.streamable_http import EventMessage

from groundhog_mcp.server.event_store import BoundedEventStore, SessionEventStore, UnscopedEventStore
from groundhog_mcp.server.http import HttpConfig
from tests.server.test_http import _MCP_HEADERS, CALL_TIMEOUT_S, Launcher, ServerProcess, post_initialize
from tests.server.test_http import launcher as launcher  # the fixture


def _ping(n: int) -> types.JSONRPCMessage:
    return types.JSONRPCRequest(jsonrpc="2.0", id=n, method="ping")


async def _replayed(store: SessionEventStore, last_event_id: str) -> tuple[str | None, list[EventMessage]]:
    sent: list[EventMessage] = []

    async def send(event: EventMessage) -> None:
        sent.append(event)

    return await store.replay_events_after(last_event_id, send), sent


async def test_replay_sends_the_events_after_the_last_one_of_that_stream_only() -> None:
    session = BoundedEventStore().for_session()
    priming = await session.store_event("a", None)
    first = await session.store_event("a", _ping(1))
    await session.store_event("b", _ping(2))
    await session.store_event("a", _ping(3))
    stream, sent = await _replayed(session, priming)
    assert stream == "a"
    assert [e.message.id for e in sent] == [1, 3]  # type: ignore[union-attr]
    stream, sent = await _replayed(session, first)
    assert [e.message.id for e in sent] == [3] and sent[0].event_id is not None  # type: ignore[union-attr]
    assert await _replayed(session, "no-such-event") == (None, [])


async def test_a_session_replays_only_its_own_events() -> None:
    """Two sessions name their streams alike (request id 1): neither replays the other's."""
    store = BoundedEventStore()
    mine, theirs = store.for_session(), store.for_session()
    my_priming = await mine.store_event("1", None)
    their_priming = await theirs.store_event("1", None)
    await theirs.store_event("1", _ping(7))
    await mine.store_event("1", _ping(8))
    assert my_priming != their_priming
    assert await _replayed(mine, their_priming) == (None, [])
    assert await _replayed(theirs, my_priming) == (None, [])
    stream, sent = await _replayed(mine, my_priming)
    assert stream == "1" and [e.message.id for e in sent] == [8]  # type: ignore[union-attr]


async def test_the_unscoped_store_refuses_to_be_used() -> None:
    with pytest.raises(RuntimeError, match="without a session"):
        await UnscopedEventStore().store_event("1", _ping(1))


async def test_the_store_is_bounded_by_count_and_bytes() -> None:
    by_count = BoundedEventStore(max_events=12).for_session()  # a session may hold a quarter: 3
    ids = [await by_count.store_event("a", _ping(n)) for n in range(5)]
    assert await _replayed(by_count, ids[0]) == (None, [])  # dropped: no replay, not a partial one
    assert [e.message.id for e in (await _replayed(by_count, ids[2]))[1]] == [3, 4]  # type: ignore[union-attr]

    size = len(_ping(0).model_dump_json(by_alias=True, exclude_unset=True))
    by_bytes = BoundedEventStore(max_bytes=size * 8).for_session()  # a quarter: two pings
    ids = [await by_bytes.store_event("a", _ping(n)) for n in range(4)]
    assert (await _replayed(by_bytes, ids[1]))[0] is None
    assert [e.message.id for e in (await _replayed(by_bytes, ids[2]))[1]] == [3]  # type: ignore[union-attr]


async def test_one_session_cannot_flush_another_and_an_ended_session_frees_its_events() -> None:
    store = BoundedEventStore(max_events=8)
    quiet, busy = store.for_session(), store.for_session()
    kept = await quiet.store_event("a", _ping(1))
    for n in range(100):
        await busy.store_event("b", _ping(n))
    assert store.event_count == 1 + 2  # the busy session keeps its quarter (2), the quiet one its event
    assert (await _replayed(quiet, kept))[0] == "a"
    del busy
    gc.collect()
    size = len(_ping(1).model_dump_json(by_alias=True, exclude_unset=True))
    assert store.event_count == 1 and store.byte_count == size


@pytest.mark.e2e
async def test_post_streams_open_with_a_priming_event_and_a_retry_hint(launcher: Launcher) -> None:
    server = launcher.start("http")
    reply = await post_initialize(server)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream"), reply.text
    events = [_fields(block) for block in reply.text.replace("\r\n", "\n").split("\n\n") if block.strip()]
    priming, answer = events[0], events[1]
    assert priming["id"] and priming["retry"] == str(HttpConfig().retry_interval_ms), events
    assert priming.get("data", "") == "", events  # a priming event carries no message
    assert answer["id"] and '"serverInfo"' in answer["data"], events


def _fields(block: str) -> dict[str, str]:
    """One SSE event's fields (``name: value`` lines)."""
    fields: dict[str, str] = {}
    for line in block.splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")
    return fields


async def _post(
    http: httpx2.AsyncClient, server: ServerProcess, session: str, message: dict[str, Any]
) -> httpx2.Response:
    headers = {**_MCP_HEADERS, "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
    return await http.post(f"{server.base}/mcp", json=message, headers=headers)


def _call(request_id: int, tool: str, **arguments: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }


@pytest.mark.e2e
async def test_a_reply_missed_while_disconnected_is_replayed_after_last_event_id(launcher: Launcher) -> None:
    """The client's POST stream drops while ``wait_for_change`` waits; the change happens; the
    client reconnects with ``Last-Event-ID`` (the priming event's id) and gets the reply."""
    server = launcher.start("http")
    async with httpx2.AsyncClient(timeout=CALL_TIMEOUT_S) as http:
        initialized = await post_initialize(server)
        session = initialized.headers["mcp-session-id"]
        await _post(http, server, session, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        await _post(http, server, session, _call(2, "register_context", name="watched"))
        headers = {**_MCP_HEADERS, "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
        waiting = _call(3, "wait_for_change", contexts=["watched"], timeout=5)
        async with http.stream("POST", f"{server.base}/mcp", json=waiting, headers=headers) as stream:
            first = ""
            async for chunk in stream.aiter_text():
                first += chunk
                if "\n\n" in first.replace("\r\n", "\n"):
                    break
        priming = _fields(first.replace("\r\n", "\n").split("\n\n")[0])
        assert priming["id"] and priming.get("data", "") == "", first
        # The stream is gone; the change arrives while nobody listens for the reply.
        await _post(http, server, session, _call(4, "update_state", name="watched", data={"v": 1}))
        resumed_headers = {
            "Accept": "text/event-stream",
            "mcp-session-id": session,
            "mcp-protocol-version": "2025-11-25",
            "last-event-id": priming["id"],
        }
        # Reconnect until the reply is there. A replay sends what was stored and, for a stream the
        # server still knows, ends; the reply must come from the store: before the priming event
        # that a re-opened live stream would start with.
        replayed = ""
        with anyio.fail_after(CALL_TIMEOUT_S):
            while '"id":3' not in replayed:
                replayed = ""
                async with http.stream("GET", f"{server.base}/mcp", headers=resumed_headers) as stream:
                    assert stream.status_code == 200
                    async for chunk in stream.aiter_text():
                        replayed += chunk
                        if '"id":3' in replayed:
                            break
    events = [_fields(block) for block in replayed.replace("\r\n", "\n").split("\n\n") if block.strip()]
    answer = next(i for i, event in enumerate(events) if '"id":3' in event.get("data", ""))
    assert all(event.get("data", "") for event in events[:answer]), events  # no priming event before it
    reply = json.loads(events[answer]["data"])
    change = reply["result"]["structuredContent"]["changes"][0]
    assert change["context"] == "watched" and change["revision"] == 2, reply
