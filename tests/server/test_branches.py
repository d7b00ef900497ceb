"""Branches and time through MCP: fork_context, merge base from lineage, as_of reads, path watches
(wait_for_change and path subscriptions in both protocol eras)."""

from __future__ import annotations

import dataclasses
import json
import uuid
import warnings
from typing import Any

import anyio
import mcp_types as types
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from groundhog_mcp.models import Change, Grant, Principal, utcnow
from groundhog_mcp.server import AppContext
from groundhog_mcp.server.notify import NamespacedSubscriptionBus
from groundhog_mcp.server.path_watch import listen_uris
from tests.server.conftest import call, fail

PLAN_URI = "groundhog://contexts/w/state?path=/data/plan"


async def _resource(client: Client, uri: str) -> dict[str, Any]:
    result = await client.read_resource(uri)
    return json.loads(getattr(result.contents[0], "text", ""))


async def test_fork_and_merge_back_through_tools(client: Client) -> None:
    await call(client, "register_context", name="main", state={"data": {"title": "t", "steps": 1}})
    forked = await call(client, "fork_context", name="main", new_name="try-a")
    assert forked["revision"] == 1 and forked["forked_from"] == {"kind": "fork", "name": "main", "revision": 1}
    info = await call(client, "get_context", name="try-a")
    assert info["forked_from"] == {"kind": "fork", "name": "main", "revision": 1}
    assert (await call(client, "get_context", name="main"))["forked_from"] is None
    resource = await _resource(client, "groundhog://contexts/try-a")
    assert resource["forked_from"] == {"kind": "fork", "name": "main", "revision": 1}
    history = await call(client, "get_history", name="try-a")
    assert history["revisions"][0]["parents"] == [{"kind": "fork", "name": "main", "revision": 1}]

    await call(client, "update_state", name="main", merge_patch={"title": "T"})
    await call(client, "update_state", name="try-a", merge_patch={"steps": 2})
    inputs = [{"context": "main"}, {"context": "try-a"}]
    preview = await call(client, "merge_states", inputs=inputs, strategy="three_way", dry_run=True)
    assert preview["base"] == {"context": "main", "revision": 1} and preview["conflict_count"] == 0
    merged = await call(client, "merge_states", inputs=inputs, strategy="three_way", target="main")
    assert merged["written"] and merged["state"]["data"] == {"title": "T", "steps": 2}
    latest = (await call(client, "get_history", name="main", limit=1))["revisions"][0]
    assert latest["op"] == "merge" and latest["parents"] == [{"kind": "merge", "name": "try-a", "revision": 2}]

    text = await fail(client, "fork_context", name="main", new_name="try-a")
    assert "new_name: a context named 'try-a' already exists (revision 2); choose another name" in text
    text = await fail(client, "fork_context", name="nope", new_name="try-b")
    assert "name: no context named 'nope'" in text


async def test_time_travel_through_tools(client: Client) -> None:
    registered = await call(client, "register_context", name="t", state={"data": {"v": 1}})
    second = await call(client, "update_state", name="t", data={"v": 2})
    await call(client, "update_state", name="t", data={"v": 3})
    state = await call(client, "get_state", name="t", as_of=second["timestamp"])
    assert (state["revision"], state["state"]["data"], state["as_of"]) == (2, {"v": 2}, second["timestamp"])
    part = await call(client, "get_state", name="t", as_of=second["timestamp"], path="/v")
    assert (part["revision"], part["value"]) == (2, 2)
    since = await call(client, "get_history", name="t", since=second["timestamp"])
    assert [r["revision"] for r in since["revisions"]] == [3, 2]
    until = await call(client, "get_history", name="t", until=second["timestamp"])
    assert [r["revision"] for r in until["revisions"]] == [1]
    diff = await call(client, "diff_states", name="t", from_revision=registered["created_at"], to_revision=2)
    assert diff == {
        "name": "t",
        "from_revision": 1,
        "to_revision": 2,
        "patch": [{"op": "replace", "path": "/data/v", "value": 2}],
    }
    result = await client.call_tool("get_state", {"name": "t", "as_of": "2001-01-01T00:00:00Z"})
    assert result.is_error and result.structured_content is not None
    assert result.structured_content["error"]["code"] == "not_found"
    text = "".join(getattr(c, "text", "") for c in result.content)
    assert "did not exist at 2001-01-01T00:00:00.000000Z; it was created at " + registered["created_at"] in text
    text = await fail(client, "get_state", name="t", as_of="yesterday")
    assert "invalid_argument: as_of" in text
    text = await fail(client, "get_state", name="t", revision=1, as_of=second["timestamp"])
    assert "as_of: give revision or as_of, not both" in text


async def test_wait_for_change_with_paths_through_tools(client: Client) -> None:
    start = await call(client, "register_context", name="w", state={"data": {"plan": {"step": 1}, "log": []}})
    cursor = start["sequence"]
    await call(client, "update_state", name="w", merge_patch={"log": ["x"]})
    quiet = await call(
        client, "wait_for_change", contexts=["w"], after_sequence=cursor, timeout=0, paths=["/data/plan"]
    )
    assert quiet["changes"] == [] and quiet["cursor"] == cursor + 1
    await call(client, "update_state", name="w", merge_patch={"plan": {"step": 2}})
    woke = await call(
        client, "wait_for_change", contexts=["w"], after_sequence=quiet["cursor"], timeout=5, paths=["/data/plan"]
    )
    assert [c["revision"] for c in woke["changes"]] == [3] and woke["changes"][0]["paths"] == ["/data/plan/step"]
    text = await fail(client, "wait_for_change", timeout=0, paths=["plan"])
    assert "paths[0]: must be a JSON Pointer" in text


async def test_path_subscription_legacy_fires_only_for_the_path(server: MCPServer[AppContext]) -> None:
    updated: list[str] = []
    arrived = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification) and "?path=" in str(message.params.uri):
            updated.append(str(message.params.uri))
            arrived.set()

    async with Client(server, mode="legacy", message_handler=on_message) as client:
        await call(client, "register_context", name="w", state={"data": {"plan": {"step": 1}, "log": []}})
        assert await _resource(client, PLAN_URI) == {
            "name": "w",
            "revision": 1,
            "path": "/data/plan",
            "value": {"step": 1},
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await client.subscribe_resource(PLAN_URI)
            try:
                await client.subscribe_resource("groundhog://contexts/w/state?path=plan")
                raise AssertionError("a bad pointer was accepted")
            except MCPError as exc:
                assert "path[0]: must be a JSON Pointer" in str(exc)
        sibling = await call(client, "update_state", name="w", merge_patch={"log": ["x"]})
        # The sibling write's feed entry is published before this returns: nothing arrived for it.
        await call(client, "wait_for_change", contexts=["w"], after_sequence=sibling["sequence"] - 1, timeout=5)
        assert updated == []
        await call(client, "update_state", name="w", merge_patch={"plan": {"step": 2}})
        with anyio.fail_after(5):
            await arrived.wait()
        assert updated == [PLAN_URI]


async def test_path_subscription_on_the_2026_stream(server: MCPServer[AppContext]) -> None:
    marker = "groundhog://contexts/marker/state"
    async with Client(server, mode="2026-07-28") as client:
        await call(client, "register_context", name="w", state={"data": {"plan": {"step": 1}, "log": []}})
        await call(client, "register_context", name="marker")
        async with client.listen(resource_subscriptions=[PLAN_URI, marker]) as subscription:
            await call(client, "update_state", name="w", merge_patch={"log": ["x"]})  # a sibling: silent
            await call(client, "update_state", name="marker", data={"n": 1})
            await call(client, "update_state", name="w", merge_patch={"plan": {"step": 2}})  # a child
            seen: list[str] = []
            with anyio.fail_after(5):
                async for event in subscription:
                    seen.append(str(getattr(event, "uri", "")))
                    if len(seen) == 2:
                        break
    # Events arrive in commit order: a notification for the sibling write would come first.
    assert seen == [marker, PLAN_URI]


async def test_path_watches_never_hear_another_namespace_or_an_unreadable_context() -> None:
    """A listen stream's path URI names a context by name: a same-named context of another
    namespace, or one its grants do not let it read, never fires it."""
    bus = NamespacedSubscriptionBus()
    heard: list[object] = []
    token = listen_uris.set((PLAN_URI,))
    try:
        unsubscribe = bus.subscribe(heard.append)
    finally:
        listen_uris.reset(token)
    touching = Change(1, uuid.uuid4(), "other", "w", 2, "update", "x", utcnow(), [{"op": "add", "path": "/data/plan"}])
    await bus.publish_paths(touching, configured=Principal(namespace="default"))
    assert heard == []
    reader_of_x = Principal(namespace="default", grants=(Grant("x", "read"),))
    await bus.publish_paths(dataclasses.replace(touching, namespace="default"), configured=reader_of_x)
    assert heard == []
    await bus.publish_paths(dataclasses.replace(touching, namespace="default"), configured=Principal())
    assert [getattr(e, "uri", None) for e in heard] == [PLAN_URI]
    unsubscribe()
    await bus.publish_paths(dataclasses.replace(touching, namespace="default"), configured=Principal())
    assert len(heard) == 1
