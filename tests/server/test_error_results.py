"""The typed error contract through the SDK's in-memory client: a code in the structured part of
every tool error, in the JSON-RPC error data of resources and prompts; the text unchanged."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult

from groundhog_mcp.app import Settings, create_server
from groundhog_mcp.service import StateManager
from tests.server.conftest import call


async def _error(client: Client, tool: str, **arguments: Any) -> tuple[dict[str, Any], str]:
    """A tool call that must fail: its structured ``error`` and its text (checked to agree)."""
    result = await client.call_tool(tool, arguments)
    text = _text(result)
    assert result.is_error, text
    assert text.startswith(f"Error executing tool {tool}: ") and "Traceback" not in text, text
    assert result.structured_content is not None, text
    error = result.structured_content["error"]
    assert error["message"] == text
    return error, text


def _text(result: CallToolResult) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def test_a_conflict_carries_its_code_and_the_current_revision(client: Client) -> None:
    await call(client, "register_context", name="plan", state={"data": {"step": 1}})
    await call(client, "update_state", name="plan", data={"step": 2}, expected_revision=1)
    await call(client, "update_state", name="plan", data={"step": 3}, expected_revision=2)
    error, text = await _error(client, "update_state", name="plan", data={"step": 9}, expected_revision=1)
    assert text.startswith(
        "Error executing tool update_state: expected_revision: conflict, expected revision 1 but context 'plan' "
        "is at revision 3; changes since revision 1 (RFC 6902): "
    )
    assert {k: v for k, v in error.items() if k != "message"} == {
        "code": "conflict",
        "retryable": True,
        "current_revision": 3,
    }
    # A taken name is a conflict too, but the same create never succeeds: not retryable.
    taken, _ = await _error(client, "register_context", name="plan")
    assert (taken["code"], taken["retryable"], taken["current_revision"]) == ("conflict", False, 3)


async def test_not_found_and_invalid_argument_codes(client: Client) -> None:
    missing, text = await _error(client, "get_state", name="nope")
    assert text == "Error executing tool get_state: name: no context named 'nope'"
    assert {k: v for k, v in missing.items() if k != "message"} == {"code": "not_found", "retryable": False}

    wrong_type, text = await _error(client, "get_state", name="nope", revision="3")
    assert text == "Error executing tool get_state: invalid_argument: revision: expected integer, got string"
    assert {k: v for k, v in wrong_type.items() if k != "message"} == {
        "code": "invalid_argument",
        "retryable": False,
        "field": "revision",
    }
    unknown, text = await _error(client, "get_state", name="nope", colour="red")
    assert text.startswith("Error executing tool get_state: invalid_argument: colour: not accepted by get_state")
    assert (unknown["code"], unknown["field"]) == ("invalid_argument", "colour")


async def test_a_state_over_the_size_limit_is_too_large(db_path: Path) -> None:
    server = create_server(Settings(database=str(db_path), max_state_bytes=1024))
    async with Client(server) as client:
        await call(client, "register_context", name="big")
        error, text = await _error(client, "update_state", name="big", data={"blob": "x" * 2000})
        assert text.startswith("Error executing tool update_state: state: serialised size ")
        assert "exceeds limit 1024 bytes" in text
        assert {k: v for k, v in error.items() if k != "message"} == {
            "code": "too_large",
            "retryable": False,
            "field": "state",
        }
        # Nothing was written.
        assert (await call(client, "get_state", name="big"))["revision"] == 1


async def test_a_pruned_revision_is_compacted_with_the_oldest_available(db_path: Path) -> None:
    async with Client(create_server(Settings(database=str(db_path), keep_revisions=2))) as client:
        await call(client, "register_context", name="c")
        for n in range(2, 31):  # retention prunes in batches: enough writes to prune revision 1
            await call(client, "update_state", name="c", data={"n": n})
        history = await call(client, "get_history", name="c", limit=100)
        oldest = min(entry["revision"] for entry in history["revisions"])
        assert oldest > 1
        error, text = await _error(client, "get_state", name="c", revision=1)
        assert text.startswith("Error executing tool get_state: revision: compacted, revision 1 of context 'c'")
        assert {k: v for k, v in error.items() if k != "message"} == {
            "code": "compacted",
            "retryable": False,
            "oldest_available": oldest,
        }


async def test_a_denied_write_is_access(db_path: Path) -> None:
    async with Client(create_server(Settings(database=str(db_path)))) as client:
        await call(client, "register_context", name="notes.todo")
    reader = create_server(Settings(database=str(db_path), principal="viewer", grants=["read:notes."]))
    async with Client(reader) as client:
        error, text = await _error(client, "update_state", name="notes.todo", data={"x": 1})
        assert text.endswith("access: the write grant on 'notes.todo' is missing for principal 'viewer'")
        assert {k: v for k, v in error.items() if k != "message"} == {"code": "access", "retryable": False}


async def test_a_bug_is_internal_with_its_error_id(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    await call(client, "register_context", name="c")

    async def broken(self: StateManager, name: str) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(StateManager, "get", broken)
    error, text = await _error(client, "get_context", name="c")
    assert re.fullmatch(r"Error executing tool get_context: internal error [0-9a-f]{12} in get_context: .*", text)
    assert {k: v for k, v in error.items() if k != "message"} == {"code": "internal", "retryable": False}


async def test_every_output_schema_admits_both_its_result_and_the_error(client: Client) -> None:
    """Clients on the TypeScript SDK validate structuredContent against outputSchema even on an
    error result: the error object must validate, and so must a real result."""
    await call(client, "register_context", name="a", state={"data": {"n": 1}})
    error = (await client.call_tool("get_state", {"name": "missing"})).structured_content
    success = await call(client, "get_state", name="a")
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    with_schema = [t for t in tools.values() if t.output_schema is not None]
    assert len(with_schema) == len(tools)
    for tool in with_schema:
        assert tool.output_schema is not None
        Draft202012Validator.check_schema(tool.output_schema)
        problems = [e.message for e in Draft202012Validator(tool.output_schema).iter_errors(error)]
        assert problems == [], tool.name
    get_state = Draft202012Validator(tools["get_state"].output_schema or {})
    assert [e.message for e in get_state.iter_errors(success)] == []
    # The success branch still requires its fields: an empty object is neither shape.
    assert not get_state.is_valid({})


async def test_resource_and_prompt_errors_carry_the_code_in_the_error_data(client: Client) -> None:
    with pytest.raises(MCPError) as read:
        await client.read_resource("groundhog://contexts/nope/state")
    assert read.value.error.message == "name: no context named 'nope'"
    assert read.value.error.data == {"code": "not_found", "retryable": False}
    with pytest.raises(MCPError) as bad:
        await client.read_resource("groundhog://contexts/nope/revisions/x")
    assert bad.value.error.data == {"code": "invalid_argument", "retryable": False}
    with pytest.raises(MCPError) as prompt:
        await client.get_prompt("resume_context", {"name": "nope"})
    assert prompt.value.error.data == {"code": "not_found", "retryable": False}
