"""Resource links in write results and cache hints (SEP-2549) on list and read results."""

from __future__ import annotations

from typing import Any

from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, ResourceLink

from groundhog_mcp.server import AppContext
from tests.server.conftest import call, fail


def _links(result: CallToolResult) -> list[dict[str, Any]]:
    return [
        c.model_dump(by_alias=True, exclude_none=True, exclude={"type"})
        for c in result.content
        if isinstance(c, ResourceLink)
    ]


def _link(name: str) -> list[dict[str, Any]]:
    return [
        {
            "uri": f"groundhog://contexts/{name}/state",
            "name": name,
            "title": f"{name} state",
            "mimeType": "application/json",
        }
    ]


async def test_write_results_link_the_state_resource(client: Client) -> None:
    handlers = {"inc": {"action": "increment", "path": "/n"}}
    merge = {"inputs": [{"context": "plan"}, {"state": {"data": {"m": 1}}}], "target": "merged"}
    writes: list[tuple[str, dict[str, Any], str]] = [
        ("register_context", {"name": "plan", "state": {"data": {"n": 1}}, "event_handlers": handlers}, "plan"),
        ("update_state", {"name": "plan", "merge_patch": {"n": 2}, "expected_revision": 1}, "plan"),
        ("rollback_state", {"name": "plan", "revision": 1}, "plan"),
        ("emit_event", {"name": "plan", "type": "inc"}, "plan"),
        ("merge_states", merge, "merged"),
    ]
    for tool, arguments, name in writes:
        if tool == "merge_states":
            await call(client, "register_context", name="merged")
        result = await client.call_tool(tool, arguments)
        assert not result.is_error, tool
        assert _links(result) == _link(name), tool
        assert result.content[0].type == "text"  # the JSON text stays first, for clients that show only it
    read = await client.call_tool("get_state", {"name": "plan"})
    assert _links(read) == []
    preview = await client.call_tool("merge_states", {"inputs": [{"context": "plan"}, {"context": "plan"}]})
    assert _links(preview) == []  # nothing written, nothing to link
    await fail(client, "update_state", name="plan", data={}, expected_revision=1)
    stale = await client.call_tool("update_state", {"name": "plan", "data": {}, "expected_revision": 1})
    assert stale.is_error and _links(stale) == []


async def test_cache_hints_private_where_the_answer_depends_on_the_principal(server: MCPServer[AppContext]) -> None:
    async with Client(server, mode="2026-07-28") as client:
        await call(client, "register_context", name="plan")
        shared = [
            await client.list_tools(),
            await client.list_prompts(),
            await client.list_resource_templates(),
        ]
        assert [(r.ttl_ms, r.cache_scope) for r in shared] == [(60_000, "public")] * 3
        per_principal = [
            await client.list_resources(),
            await client.read_resource("groundhog://contexts/plan/state"),
        ]
        assert [(r.ttl_ms, r.cache_scope) for r in per_principal] == [(0, "private")] * 2
