"""emit_event, list_dead_letters and replay_dead_letter through the SDK's in-memory client."""

from __future__ import annotations

import uuid

from mcp import Client

from tests.server.conftest import call, fail


async def test_emit_event_with_declarative_handler_and_idempotency(client: Client) -> None:
    handlers = {
        "task.added": {"action": "append", "path": "/tasks", "value_from": "/task"},
        "tick": {"action": "increment", "path": "/ticks", "value_from": "/by"},
    }
    await call(client, "register_context", name="board", state={"data": {"tasks": []}}, event_handlers=handlers)
    added = await call(
        client, "emit_event", name="board", type="task.added", payload={"task": "write"}, idempotency_key="t1"
    )
    assert added["revision"] == 2 and added["duplicate"] is False
    assert added["patch"] == [{"op": "add", "path": "/data/tasks/0", "value": "write"}]
    repeat = await call(
        client, "emit_event", name="board", type="task.added", payload={"task": "write"}, idempotency_key="t1"
    )
    assert repeat["duplicate"] is True and repeat["revision"] == 2
    await call(client, "emit_event", name="board", type="tick", payload={"by": 2})
    state = await call(client, "get_state", name="board")
    assert state["state"]["data"] == {"tasks": ["write"], "ticks": 2} and state["revision"] == 3
    history = await call(client, "get_history", name="board", limit=1)
    assert history["revisions"][0]["op"] == "event"


async def test_event_errors_are_clear(client: Client) -> None:
    await call(client, "register_context", name="c", event_handlers={"tick": {"action": "increment", "path": "/n"}})
    text = await fail(client, "emit_event", name="c", type="other")
    assert "no handler for event type 'other' (handlers: tick)" in text
    text = await fail(client, "register_context", name="d", event_handlers={"x": {"action": "boom", "path": "/a"}})
    assert "event_handlers.x: action must be one of" in text
    text = await fail(client, "emit_event", name="c", type="tick", payload={"big": "x" * 300_000})
    assert "payload: serialised size" in text and "262144" in text


async def test_dead_letter_then_replay(client: Client) -> None:
    spec = {"plugin": "flaky-counter", "max_attempts": 2}
    await call(client, "register_context", name="c", state={"data": {"count": 0}}, event_handlers={"count": spec})
    key = f"k-{uuid.uuid4()}"
    text = await fail(client, "emit_event", name="c", type="count", payload={"fail_times": 2}, idempotency_key=key)
    assert "failed 2 time(s); the state is unchanged" in text and "replay_dead_letter" in text
    listed = await call(client, "list_dead_letters")
    (letter,) = listed["dead_letters"]
    assert letter["context"] == "c" and letter["attempts"] == 2 and "planned failure 2" in letter["last_error"]
    replayed = await call(client, "replay_dead_letter", id=letter["id"])
    assert replayed["revision"] == 2
    assert (await call(client, "get_state", name="c"))["state"]["data"] == {"count": 1}
    assert (await call(client, "list_dead_letters"))["dead_letters"] == []
    text = await fail(client, "replay_dead_letter", id=letter["id"])
    assert "already replayed" in text


async def test_get_metrics_counts_exactly(client: Client) -> None:
    await call(client, "register_context", name="m", event_handlers={"tick": {"action": "increment", "path": "/n"}})
    await call(client, "register_context", name="other")
    for _ in range(3):
        await call(client, "update_state", name="m", merge_patch={"x": 1})
    for _ in range(2):
        await call(client, "emit_event", name="m", type="tick")
    await fail(client, "update_state", name="m", data={}, expected_revision=1)
    metrics = await call(client, "get_metrics", names=["m"])
    (m,) = metrics["contexts"]
    assert m["name"] == "m" and m["revision"] == 6
    assert m["state_updates"] == 5 and m["events_handled"] == 2 and m["dead_letters"] == 0
    assert m["write_latency"]["count"] == 6  # 5 writes + the conflicting attempt
    handler = m["handler_latency"]
    # Two samples a <= b: the p95 is b, the average (a + b) / 2, so average <= p95 <= 2 * average
    # (0.002: the rounding of both to 3 decimals).
    assert handler["count"] == 2 and handler["average_ms"] <= handler["p95_ms"] <= 2 * handler["average_ms"] + 0.002
    assert m["errors"] == {"ConflictError": 1}
    state = await call(client, "get_state", name="m")
    assert m["state_size"] == len(
        __import__("json").dumps(state["state"], separators=(",", ":"), ensure_ascii=False).encode()
    )
    server = metrics["server"]
    assert server["contexts"] == 2 and server["errors"]["ConflictError"] == 1
    assert server["rss_bytes"] > 0 and server["database_bytes"] > 0 and server["uptime_seconds"] >= 0
    everything = await call(client, "get_metrics")
    assert [c["name"] for c in everything["contexts"]] == ["m", "other"]
