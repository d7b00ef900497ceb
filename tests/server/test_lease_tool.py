"""The ``lease`` tool and ``lease_token`` on the write tools, through the SDK client."""

from __future__ import annotations

import json
from typing import Any

from mcp import Client

from groundhog_mcp.models import parse_timestamp, utcnow
from tests.server.conftest import call, fail


async def _error(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert result.is_error and result.structured_content is not None
    return result.structured_content["error"]


async def test_agents_take_turns_through_the_tools(client: Client) -> None:
    handlers = {"inc": {"action": "increment", "path": "/n"}}
    await call(client, "register_context", name="tasks", state={"data": {"todo": ["a", "b"]}}, event_handlers=handlers)
    taken = await call(client, "lease", name="tasks", action="take", ttl_seconds=30, holder="planner")
    assert (taken["token"], taken["held"], taken["holder"]) == (1, True, "local/planner")
    expires_at = taken["expires_at"]
    assert 29 < (parse_timestamp(expires_at) - utcnow()).total_seconds() <= 30
    # Another agent: its write without the token is refused, naming holder and expiry.
    error = await _error(client, "update_state", name="tasks", merge_patch={"todo": []})
    assert (error["code"], error["retryable"], error["holder"], error["expires_at"]) == (
        "leased",
        True,
        "local/planner",
        expires_at,
    )
    leased_by = f"lease_token: context 'tasks' is leased by 'local/planner' until {expires_at}"
    assert error["message"].startswith(f"Error executing tool update_state: {leased_by}")
    refused = await _error(client, "lease", name="tasks", action="take", holder="worker")
    assert (refused["code"], refused["holder"]) == ("leased", "local/planner")
    described = await call(client, "get_context", name="tasks")
    assert described["lease"] == {
        "name": "tasks",
        "token": 1,
        "held": True,
        "holder": "local/planner",
        "expires_at": expires_at,
        "sequence": None,
    }
    resource = await client.read_resource("groundhog://contexts/tasks")
    assert json.loads(getattr(resource.contents[0], "text", ""))["lease"]["token"] == 1
    # The holder writes with its token, then releases in the same call.
    written = await call(
        client,
        "update_state",
        name="tasks",
        patch=[{"op": "remove", "path": "/todo/0"}],
        expected_revision=1,
        lease_token=1,
        release_lease=True,
    )
    assert written["revision"] == 2
    assert (await call(client, "get_context", name="tasks"))["lease"] is None
    stale = await _error(client, "update_state", name="tasks", data={}, lease_token=1)
    assert (stale["code"], stale["retryable"]) == ("leased", False) and "holder" not in stale
    second = await call(client, "lease", name="tasks", action="take", holder="worker")
    assert second["token"] == 2
    renewed = await call(client, "lease", name="tasks", action="renew", token=2, ttl_seconds=5)
    assert renewed["held"] and renewed["expires_at"] != second["expires_at"]
    for tool, arguments in (
        ("rollback_state", {"name": "tasks", "revision": 1}),
        ("emit_event", {"name": "tasks", "type": "inc"}),
        ("merge_states", {"inputs": [{"context": "tasks"}, {"context": "tasks"}], "target": "tasks"}),
        ("unregister_context", {"name": "tasks"}),
    ):
        assert (await _error(client, tool, **arguments))["code"] == "leased", tool
    assert (await call(client, "rollback_state", name="tasks", revision=1, lease_token=2))["revision"] == 3
    released = await call(client, "lease", name="tasks", action="release", token=2)
    assert (released["held"], released["holder"], released["expires_at"]) == (False, None, None)
    history = await call(client, "get_history", name="tasks")
    assert [r["op"] for r in history["revisions"]] == ["rollback", "update", "register"]
    audit = await call(client, "audit_log", context="tasks", newest_first=False)
    assert [(e["operation"], e["revision"], (e["detail"] or "").split(",")[0]) for e in audit["entries"]] == [
        ("register", 1, ""),
        ("lease_take", 1, "token 1"),
        ("update", 2, "patch"),
        ("lease_release", 2, "token 1"),
        ("lease_take", 2, "token 2"),
        ("lease_renew", 2, "token 2"),
        ("rollback", 3, "restores revision 1"),
        ("lease_release", 3, "token 2"),
    ]
    changes = await call(client, "wait_for_change", contexts=["tasks"], after_sequence=0, timeout=0)
    assert [c["op"] for c in changes["changes"]][:3] == ["register", "lease_take", "update"]


async def test_bad_lease_arguments_name_the_field(client: Client) -> None:
    await call(client, "register_context", name="tasks")
    assert (await fail(client, "lease", name="tasks", action="renew")).endswith(
        "token: renew needs the token take returned"
    )
    text = await fail(client, "lease", name="tasks", action="take", ttl_seconds=0)
    assert text.endswith("ttl_seconds: must be more than 0 and at most 3600 seconds; got 0")
    text = await fail(client, "lease", name="tasks", action="take", wait_seconds=90)
    assert text.endswith("wait_seconds: must be between 0 and 60 seconds; got 90")
    assert (await _error(client, "lease", name="nope", action="take"))["code"] == "not_found"
    assert (await _error(client, "lease", name="tasks", action="dance"))["code"] == "invalid_argument"
