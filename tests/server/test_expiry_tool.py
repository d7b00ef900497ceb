"""An expired context answers every tool and resource exactly as a missing one: the whole result
(text and structured content, or the resource error), byte for byte with the name substituted,
both on the first touch (which records the removal) and after it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.server.conftest import call

TOOLS: list[tuple[str, Callable[[str], dict[str, Any]]]] = [
    ("get_context", lambda n: {"name": n}),
    ("get_state", lambda n: {"name": n}),
    ("get_state", lambda n: {"name": n, "revision": 1}),
    ("get_history", lambda n: {"name": n}),
    ("diff_states", lambda n: {"name": n, "from_revision": 1}),
    ("validate_state", lambda n: {"name": n}),
    ("update_state", lambda n: {"name": n, "data": {"n": 2}}),
    ("update_state", lambda n: {"name": n, "data": {"n": 2}, "expected_revision": 1}),
    ("rollback_state", lambda n: {"name": n, "revision": 1}),
    ("emit_event", lambda n: {"name": n, "type": "inc"}),
    ("unregister_context", lambda n: {"name": n}),
    ("lease", lambda n: {"name": n, "action": "take"}),
    ("update_context", lambda n: {"name": n, "metadata": {"a": 1}}),
    ("merge_states", lambda n: {"inputs": [{"context": n}, {"context": "kept"}]}),
    ("fork_context", lambda n: {"name": n, "new_name": f"{n}.fork"}),
]
RESOURCES = [
    "groundhog://contexts/{}",
    "groundhog://contexts/{}/state",
    "groundhog://contexts/{}/history",
    "groundhog://contexts/{}/revisions/1",
]


async def _answer(client: Client, case: int, name: str) -> str:
    if case >= len(TOOLS):
        try:
            result = await client.read_resource(RESOURCES[case - len(TOOLS)].format(name))
        except MCPError as exc:
            return f"resource error {exc.error.code}: {exc.error.message}"
        return result.model_dump_json()
    tool, arguments = TOOLS[case]
    result = await client.call_tool(tool, arguments(name))
    return json.dumps(
        {
            "is_error": result.is_error,
            "content": [c.model_dump() for c in result.content],
            "structured": result.structured_content,
        },
        sort_keys=True,
    )


async def test_an_expired_context_answers_byte_for_byte_like_a_missing_one(client: Client) -> None:
    cases = range(len(TOOLS) + len(RESOURCES))
    handlers = {"inc": {"action": "increment", "path": "/n"}}
    await call(client, "register_context", name="kept", state={"data": {"n": 0}})
    for case in cases:
        await call(
            client,
            "register_context",
            name=f"scratch{case}",
            state={"data": {"n": 1}},
            event_handlers=handlers,
            settings={"ttl_seconds": 1},
        )
    await asyncio.sleep(1.1)  # past every expiry; nothing runs meanwhile
    for case in cases:
        first = await _answer(client, case, f"scratch{case}")  # the touch that records the removal
        missing = await _answer(client, case, f"never{case}")
        assert first == missing.replace(f"never{case}", f"scratch{case}"), (case, first, missing)
        assert "not_found" in first or "resource error" in first, first
        after = await _answer(client, case, f"scratch{case}")
        assert after == first, case
    listed = await call(client, "list_contexts")
    assert [c["name"] for c in listed["contexts"]] == ["kept"]
