"""The seed scenario against the real console script over stdio, in both protocol eras.

``legacy`` is the initialize handshake (2025-11-25, what Claude Desktop and most clients
speak today); ``auto`` probes ``server/discover`` and lands on 2026-07-28.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.subscriptions import ResourcesListChanged, Subscription
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from tests.e2e.harness import (
    CALL_TIMEOUT_S,
    TOOL_NAMES,
    Inbox,
    RawServer,
    assert_error_text,
    call_error,
    call_ok,
    json_log_lines,
    mcp_client,
    raw_result_text,
)

pytestmark = pytest.mark.e2e

MODES = ["legacy", "auto"]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "count": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
        "nested": {"type": "object"},
    },
    "required": ["title"],
}


class ListChanged:
    """Waits for ``resources/list_changed`` the way each era delivers it.

    Handshake era: a ``notifications/resources/list_changed`` on the session. 2026-07-28:
    a ``ResourcesListChanged`` event on a ``subscriptions/listen`` stream.
    """

    def __init__(self, client: Client, inbox: Inbox) -> None:
        self._client = client
        self._inbox = inbox
        self._subscription: Subscription | None = None
        self._seen = 0

    async def open(self, stack: contextlib.AsyncExitStack) -> None:
        if self._client.protocol_version in MODERN_PROTOCOL_VERSIONS:
            self._subscription = await stack.enter_async_context(self._client.listen(resources_list_changed=True))

    async def wait(self) -> None:
        if self._subscription is None:
            self._seen += 1
            await self._inbox.wait_for_count(types.ResourceListChangedNotification, self._seen)
            return
        with anyio.fail_after(CALL_TIMEOUT_S):
            async for event in self._subscription:
                if isinstance(event, ResourcesListChanged):
                    return
        raise AssertionError("the subscriptions/listen stream ended before resources/list_changed")


@pytest.mark.parametrize("mode", MODES)
async def test_seed_scenario(mode: str, database: Path, sdk_env: dict[str, str], tmp_path: Path) -> None:
    stderr_path = tmp_path / "server.stderr"
    inbox = Inbox()
    async with (
        mcp_client(database, mode=mode, stderr_path=stderr_path, env=sdk_env, message_handler=inbox) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        eras = HANDSHAKE_PROTOCOL_VERSIONS if mode == "legacy" else MODERN_PROTOCOL_VERSIONS
        assert client.protocol_version in eras, f"mode={mode} negotiated {client.protocol_version}"

        listing = await client.list_tools()
        assert {tool.name for tool in listing.tools} == TOOL_NAMES
        assert listing.next_cursor is None

        list_changed = ListChanged(client, inbox)
        await list_changed.open(stack)

        # register_context: revision 1, with a schema every later write must satisfy.
        initial = {"title": "seed", "tags": ["a"], "nested": {"x": 1, "y": 2}}
        registered = await call_ok(
            client,
            "register_context",
            {
                "name": "seed",
                "version": "1.0.0",
                "state": {"data": initial, "metadata": {"owner": "e2e"}},
                "json_schema": SCHEMA,
            },
        )
        assert registered["created"] is True
        assert registered["name"] == "seed"
        assert registered["revision"] == 1
        assert registered["json_schema"] == SCHEMA
        await list_changed.wait()

        # update_state with the revision we hold.
        written = {"title": "seed", "tags": ["a", "b"], "nested": {"x": 1, "y": 2}, "count": 1}
        update = await call_ok(client, "update_state", {"name": "seed", "data": written, "expected_revision": 1})
        assert update["revision"] == 2
        assert update["previous_revision"] == 1
        assert {"op": "add", "path": "/data/count", "value": 1} in update["patch"]

        # get_state returns exactly what was written, and the revision to write against.
        read = await call_ok(client, "get_state", {"name": "seed"})
        assert read["revision"] == read["current_revision"] == 2
        assert read["state"]["data"] == written
        assert read["state"]["metadata"] == {"owner": "e2e"}
        assert read["state"]["version"] == "1.0.0"
        assert datetime.fromisoformat(read["state"]["timestamp"]).utcoffset() is not None

        # A stale expected_revision is a conflict naming the current revision; nothing changes.
        conflict = await call_error(client, "update_state", {"name": "seed", "data": initial, "expected_revision": 1})
        assert "conflict" in conflict
        assert "revision 2" in conflict
        assert (await call_ok(client, "get_state", {"name": "seed"}))["revision"] == 2

        # "merge": an RFC 7396 merge patch (objects merge, null deletes, arrays replace).
        merged = await call_ok(
            client,
            "update_state",
            {
                "name": "seed",
                "merge_patch": {"count": 3, "nested": {"x": None, "z": 9}, "tags": ["c"]},
                "expected_revision": 2,
            },
        )
        assert merged["revision"] == 3
        after_merge = await call_ok(client, "get_state", {"name": "seed"})
        assert after_merge["state"]["data"] == {"title": "seed", "tags": ["c"], "nested": {"y": 2, "z": 9}, "count": 3}
        assert after_merge["revision"] == 3

        # validate_state: the current state is valid; a bad candidate lists every error by JSON Pointer.
        valid = await call_ok(client, "validate_state", {"name": "seed"})
        assert valid == {"name": "seed", "valid": True, "errors": []}
        invalid = await call_ok(
            client, "validate_state", {"name": "seed", "data": {"title": 5, "count": -1, "tags": ["ok", 7]}}
        )
        assert invalid["valid"] is False
        pointers = {error["pointer"] for error in invalid["errors"]}
        assert {"/data/title", "/data/count", "/data/tags/1"} <= pointers, invalid["errors"]
        assert all(error["message"] for error in invalid["errors"])

        # The same candidate as a write is refused, and the state stays at revision 3.
        refused = await call_error(
            client, "update_state", {"name": "seed", "data": {"title": 5}, "expected_revision": 3}
        )
        assert "state.data.title" in refused
        assert (await call_ok(client, "get_state", {"name": "seed"}))["state"]["data"] == after_merge["state"]["data"]

        # unregister_context, then the name is gone and the error says which context.
        unregistered = await call_ok(client, "unregister_context", {"name": "seed", "expected_revision": 3})
        assert unregistered["unregistered"] is True
        assert unregistered["revision"] == 4
        await list_changed.wait()
        gone = await call_error(client, "get_state", {"name": "seed"})
        assert "seed" in gone

    assert inbox.transport_errors == [], f"stdout carried non-protocol data: {inbox.transport_errors}"
    records = json_log_lines(stderr_path.read_text(encoding="utf-8"))
    assert records, "the server wrote no structured log line on stderr"
    assert all("level" in record for record in records)


@pytest.mark.parametrize("mode", MODES)
async def test_tool_errors_are_messages(mode: str, database: Path, sdk_env: dict[str, str], tmp_path: Path) -> None:
    """Every kind of bad request comes back as a tool error naming the field, never a traceback."""
    inbox = Inbox()
    async with mcp_client(
        database, mode=mode, stderr_path=tmp_path / "server.stderr", env=sdk_env, message_handler=inbox
    ) as client:
        await call_ok(
            client, "register_context", {"name": "errs", "json_schema": SCHEMA, "state": {"data": {"title": "t"}}}
        )
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("update_state", {"name": "errs", "data": {"title": 1}}, "state.data.title"),
            ("update_state", {"name": "errs", "data": {"title": "t"}, "merge_patch": {}}, "exactly one"),
            ("update_state", {"name": "errs", "patch": [{"op": "remove", "path": "/nope"}]}, "patch"),
            ("update_state", {"name": "errs", "data": {"title": "t"}, "expected_revision": 7}, "conflict"),
            ("update_state", {"name": "bad name", "data": {}}, "name"),
            ("update_state", {"name": "errs", "expected_revision": "abc", "data": {}}, "expected_revision"),
            ("get_state", {"name": "errs", "revision": 99}, "99"),
            ("get_state", {"name": "missing"}, "missing"),
            ("register_context", {"name": "errs"}, "already exists"),
            ("diff_states", {"name": "errs", "from_revision": 5}, "5"),
            ("rollback_state", {"name": "missing", "revision": 1}, "missing"),
        ]
        for tool, arguments, expected in cases:
            text = await call_error(client, tool, arguments)
            assert expected in text, f"{tool}({arguments}): {text!r} does not mention {expected!r}"
        state = await call_ok(client, "get_state", {"name": "errs"})
        assert state["revision"] == 1, "a failed write changed the state"
    assert inbox.transport_errors == []


async def test_stdout_carries_only_protocol(database: Path, raw_env: dict[str, str], tmp_path: Path) -> None:
    """Byte-level check: every stdout line is one JSON-RPC message; logs go to stderr only."""
    stderr_path = tmp_path / "server.stderr"
    server = await RawServer.start(database, env=raw_env, stderr_path=stderr_path)
    try:
        init = await server.initialize()
        assert init["protocolVersion"] == "2025-11-25"
        assert init["capabilities"]["resources"]["listChanged"] is True
        tools = await server.request("tools/list", {})
        assert {tool["name"] for tool in tools["tools"]} == TOOL_NAMES
        await server.call_ok("register_context", {"name": "purity", "state": {"data": {"n": 0}}})
        await server.call_ok("update_state", {"name": "purity", "data": {"n": 1}, "expected_revision": 1})
        # Failing calls are the ones that log: their log lines must not reach stdout either.
        for arguments in ({"name": "purity", "data": {"n": 2}, "expected_revision": 1}, {"name": "nope", "data": {}}):
            result = await server.call_tool("update_state", arguments)
            assert result["isError"] is True
            assert_error_text(raw_result_text(result), "update_state")
        assert await server.close() == 0, "the server did not exit cleanly when stdin closed"
    finally:
        await server.ensure_dead()
    # Six responses (initialize, tools/list, four calls) plus notifications, nothing else.
    methods = [n.get("method") for n in server.notifications]
    assert "notifications/resources/list_changed" in methods
    assert server.stdout_lines == 6 + len(server.notifications)
    records = json_log_lines(stderr_path.read_text(encoding="utf-8"))
    assert records, "the server wrote no structured log line on stderr"


async def test_nan_and_infinity_literals_are_refused(database: Path, raw_env: dict[str, str], tmp_path: Path) -> None:
    """Python's JSON parser accepts NaN/Infinity on stdin; the server must refuse them, not store them."""
    server = await RawServer.start(database, env=raw_env, stderr_path=tmp_path / "server.stderr")
    try:
        await server.initialize()
        await server.call_ok("register_context", {"name": "numbers", "state": {"data": {"x": 1}}})
        for literal in ("NaN", "Infinity", "-Infinity"):
            request_id = f"raw-{literal}"
            await server.send_line(
                f'{{"jsonrpc": "2.0", "id": "{request_id}", "method": "tools/call", "params": {{"name": '
                f'"update_state", "arguments": {{"name": "numbers", "data": {{"x": {literal}}}}}}}}}'
            )
            result = await server.response_to(request_id)
            text = raw_result_text(result)
            assert result.get("isError") is True, f"{literal} was accepted: {result}"
            assert_error_text(text, "update_state")
            assert "data.x" in text, text
        state = await server.call_ok("get_state", {"name": "numbers"})
        assert state["revision"] == 1
        assert state["state"]["data"] == {"x": 1}
        assert await server.close() == 0
    finally:
        await server.ensure_dead()
