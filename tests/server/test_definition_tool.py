"""``update_context`` and ``register_context(if_exists='return')`` naming what differs."""

from __future__ import annotations

from typing import Any

from mcp import Client

from tests.server.conftest import call

SCHEMA: dict[str, Any] = {"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}}


async def test_redefinition_refused_then_accepted_then_enforced(client: Client) -> None:
    await call(client, "register_context", name="task", state={"data": {"name": "x"}})
    refused = await client.call_tool("update_context", {"name": "task", "json_schema": SCHEMA})
    assert refused.is_error and refused.structured_content is not None
    error = refused.structured_content["error"]
    assert (error["code"], error["field"]) == ("invalid_argument", "state")
    assert "state.data: 'title' is a required property" in error["message"]
    assert "nothing was changed" in error["message"]
    await call(client, "update_state", name="task", data={"title": "x"})
    redefined = await call(client, "update_context", name="task", json_schema=SCHEMA, expected_revision=2)
    assert (redefined["revision"], redefined["json_schema"], redefined["sequence"]) == (3, SCHEMA, 3)
    written = await client.call_tool("update_state", {"name": "task", "data": {"title": 1}})
    assert written.is_error
    history = await call(client, "get_history", name="task")
    assert [r["op"] for r in history["revisions"]] == ["redefine", "update", "register"]
    audit = await call(client, "audit_log", context="task", operation="redefine")
    assert [(e["revision"], e["detail"]) for e in audit["entries"]] == [(3, "redefines json_schema")]


async def test_register_if_exists_return_says_what_differs(client: Client) -> None:
    await call(client, "register_context", name="c", json_schema={"type": "object"}, metadata={"a": 1})
    same = await call(client, "register_context", name="c", if_exists="return", json_schema={"type": "object"})
    assert (same["created"], same["differs"]) == (False, [])
    other = await call(
        client, "register_context", name="c", if_exists="return", version="2.0.0", metadata={"a": 2}, settings={}
    )
    assert (other["created"], other["differs"], other["version"]) == (False, ["version", "metadata"], "1.0.0")
