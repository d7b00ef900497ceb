"""Resources and change notifications through the SDK's in-memory client."""

from __future__ import annotations

import json
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from groundhog_mcp.server import AppContext
from tests.server.conftest import call


def _json(result: types.ReadResourceResult) -> Any:
    content = result.contents[0]
    assert isinstance(content, types.TextResourceContents)
    assert content.mime_type in ("application/json", "application/schema+json")
    return json.loads(content.text)


async def test_resources_list_and_templates(client: Client) -> None:
    await call(client, "register_context", name="alpha", state={"data": {"x": 1}})
    listed = await client.list_resources()
    uris = [r.uri for r in listed.resources]
    assert uris == ["groundhog://contexts", "groundhog://contexts/alpha/state"]
    templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
    assert {
        "groundhog://contexts{?cursor}",
        "groundhog://contexts/{name}",
        "groundhog://contexts/{name}/state{?path}",
        "groundhog://contexts/{name}/history",
        "groundhog://contexts/{name}/revisions/{revision}",
        "groundhog://schemas/{name}",
    } <= templates


async def test_resources_list_paginates(client: Client) -> None:
    for i in range(105):
        await call(client, "register_context", name=f"c{i:03d}")
    first = await client.list_resources()
    assert len(first.resources) == 101 and first.next_cursor
    second = await client.list_resources(cursor=first.next_cursor)
    assert [r.name for r in second.resources] == [f"c{i:03d}" for i in range(100, 105)]
    assert second.next_cursor is None
    page = _json(await client.read_resource("groundhog://contexts"))
    assert len(page["contexts"]) == 100 and page["next"].startswith("groundhog://contexts?cursor=")
    rest = _json(await client.read_resource(page["next"]))
    assert [c["name"] for c in rest["contexts"]] == [f"c{i:03d}" for i in range(100, 105)]


async def test_read_each_resource(client: Client) -> None:
    await call(client, "register_context", name="alpha", state={"data": {"x": 1}}, metadata={"m": 1})
    await call(client, "update_state", name="alpha", data={"x": 2})
    context = _json(await client.read_resource("groundhog://contexts/alpha"))
    assert context["name"] == "alpha" and context["revision"] == 2 and context["metadata"] == {"m": 1}
    state = _json(await client.read_resource("groundhog://contexts/alpha/state"))
    assert state["revision"] == 2 and state["state"]["data"] == {"x": 2}
    history = _json(await client.read_resource("groundhog://contexts/alpha/history"))
    assert [r["revision"] for r in history["revisions"]] == [2, 1]
    old = _json(await client.read_resource("groundhog://contexts/alpha/revisions/1"))
    assert old["revision"] == 1 and old["state"]["data"] == {"x": 1}
    schema = _json(await client.read_resource("groundhog://schemas/context_state"))
    assert schema["title"] == "ContextState"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("groundhog://contexts/missing/state", "no context named 'missing'"),
        ("groundhog://contexts/alpha/revisions/9", "has no revision 9"),
        ("groundhog://contexts/alpha/revisions/zero", "revision: must be a positive integer"),
        ("groundhog://schemas/nope", "no schema 'nope'"),
    ],
)
async def test_resource_errors_are_clear(client: Client, uri: str, message: str) -> None:
    await call(client, "register_context", name="alpha")
    with pytest.raises(MCPError, match=message):
        await client.read_resource(uri)


async def test_list_changed_on_register_and_unregister_legacy(server: MCPServer[AppContext]) -> None:
    received: list[str] = []
    arrived = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ServerNotification) and isinstance(message, types.ResourceListChangedNotification):
            received.append(message.method)
            if len(received) >= 2:
                arrived.set()

    async with Client(server, mode="legacy", message_handler=on_message) as client:
        assert client.server_capabilities.resources is not None
        assert client.server_capabilities.resources.list_changed is True
        await call(client, "register_context", name="n")
        await call(client, "update_state", name="n", data={"a": 1})
        await call(client, "unregister_context", name="n")
        with anyio.fail_after(5):
            await arrived.wait()
    assert received == ["notifications/resources/list_changed"] * 2


async def test_list_changed_and_updates_on_the_2026_stream(server: MCPServer[AppContext]) -> None:
    async with (
        Client(server, mode="2026-07-28") as client,
        client.listen(
            resources_list_changed=True, resource_subscriptions=["groundhog://contexts/n/state"]
        ) as subscription,
    ):
        await call(client, "register_context", name="n")
        await call(client, "update_state", name="n", data={"a": 1})
        kinds: set[str] = set()
        with anyio.fail_after(5):
            async for event in subscription:
                kinds.add(type(event).__name__)
                if kinds == {"ResourcesListChanged", "ResourceUpdated"}:
                    break
    # Events are level triggers the client deduplicates: one of each kind is what is promised.
    assert kinds == {"ResourcesListChanged", "ResourceUpdated"}
