"""Every tool through the SDK's in-memory client, on both protocol eras, including error paths."""

from __future__ import annotations

import json
import re

import pytest
from mcp import Client

from groundhog_mcp import StateManager
from tests.e2e.harness import TOOL_NAMES
from tests.server.conftest import call, fail

TOOLS = TOOL_NAMES


async def test_tools_are_listed_with_annotations_and_schemas(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and len(tool.description) > 40
        assert tool.output_schema is not None
        assert tool.annotations is not None
    assert tools["get_state"].annotations.read_only_hint is True  # type: ignore[union-attr]
    assert tools["unregister_context"].annotations.destructive_hint is True  # type: ignore[union-attr]
    assert tools["rollback_state"].annotations.destructive_hint is True  # type: ignore[union-attr]
    assert tools["update_state"].annotations.read_only_hint is False  # type: ignore[union-attr]
    name_schema = tools["update_state"].input_schema["properties"]["name"]
    assert name_schema["pattern"] == "^[A-Za-z0-9._-]{1,128}$"


async def test_register_get_and_get_or_create(client: Client) -> None:
    created = await call(
        client,
        "register_context",
        name="plan",
        version="2.1.0",
        state={"data": {"steps": []}, "metadata": {"by": "test"}},
        metadata={"purpose": "demo"},
        settings={"ttl": 5},
    )
    assert created["created"] is True and created["revision"] == 1 and created["version"] == "2.1.0"
    again = await call(client, "register_context", name="plan", if_exists="return")
    assert again["created"] is False and again["id"] == created["id"]
    info = await call(client, "get_context", name="plan")
    assert info["metadata"] == {"purpose": "demo"} and info["settings"] == {"ttl": 5}
    text = await fail(client, "register_context", name="plan")
    assert "already exists (revision 1)" in text and "if_exists='return'" in text


async def test_update_get_and_conflict(client: Client) -> None:
    await call(client, "register_context", name="c", state={"data": {"n": 0}})
    written = await call(client, "update_state", name="c", data={"n": 1}, expected_revision=1)
    assert written["revision"] == 2 and written["previous_revision"] == 1
    assert written["patch"] == [{"op": "replace", "path": "/data/n", "value": 1}]
    state = await call(client, "get_state", name="c")
    assert state["revision"] == 2 and state["state"]["data"] == {"n": 1}
    assert state["state"]["timestamp"].endswith("Z")
    text = await fail(client, "update_state", name="c", data={"n": 5}, expected_revision=1)
    assert "conflict, expected revision 1 but context 'c' is at revision 2" in text
    assert '[{"op":"replace","path":"/data/n","value":1}]' in text
    assert (await call(client, "get_state", name="c"))["state"]["data"] == {"n": 1}


async def test_merge_patch_json_patch_and_metadata(client: Client) -> None:
    await call(client, "register_context", name="c", state={"data": {"a": {"b": 1}, "list": [1, 2]}})
    merged = await call(client, "update_state", name="c", merge_patch={"a": {"c": 2}, "list": None})
    assert merged["revision"] == 2
    patched = await call(
        client,
        "update_state",
        name="c",
        patch=[
            {"op": "test", "path": "/a/b", "value": 1},
            {"op": "move", "from": "/a/c", "path": "/moved"},
        ],
        metadata={"note": "moved c"},
    )
    assert patched["revision"] == 3
    state = await call(client, "get_state", name="c")
    assert state["state"]["data"] == {"a": {"b": 1}, "moved": 2}
    assert state["state"]["metadata"] == {"note": "moved c"}
    text = await fail(client, "update_state", name="c", patch=[{"op": "test", "path": "/a/b", "value": 2}])
    assert "patch: a 'test' operation failed" in text
    text = await fail(client, "update_state", name="c", data={}, merge_patch={})
    assert "update: give exactly one of data" in text


async def test_get_state_by_revision_and_path(client: Client) -> None:
    await call(client, "register_context", name="c", state={"data": {"items": [{"id": 1}, {"id": 2}]}})
    await call(client, "update_state", name="c", data={"items": []})
    part = await call(client, "get_state", name="c", revision=1, path="/items/1/id")
    assert part["value"] == 2 and part["revision"] == 1 and part["current_revision"] == 2
    # What does not apply to a read is left out, not sent as null (the schema's default).
    assert set(part) == {"name", "revision", "current_revision", "path", "value"}
    whole = await call(client, "get_state", name="c")
    assert set(whole) == {"name", "revision", "current_revision", "value", "state"} and whole["value"] is None
    null_at_path = await call(client, "get_state", name="c", path="/items")
    assert null_at_path["value"] == [] and set(null_at_path) == set(part)
    text = await fail(client, "get_state", name="c", path="/items/5")
    assert "path: '/items/5' does not exist" in text
    text = await fail(client, "get_state", name="c", path="items")
    assert "path: must be a JSON Pointer" in text
    text = await fail(client, "get_state", name="c", revision=7)
    assert "revision: context 'c' has no revision 7 (current revision is 2)" in text


async def test_validation_errors_name_field_rule_and_limit(client: Client) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    await call(client, "register_context", name="c", state={"data": {"n": 1}}, json_schema=schema)
    text = await fail(client, "update_state", name="c", data={"n": "one"})
    assert "state.data.n: must be of type 'integer' (got a string) (JSON Schema rule 'type')" in text
    deep: dict[str, object] = {}
    for _ in range(64):
        deep = {"a": deep}
    text = await fail(client, "update_state", name="c", merge_patch={"x": deep})
    assert "nesting depth 65 exceeds limit 64" in text
    text = await fail(client, "update_state", name="c", data={"n": 1, "big": "x" * (1024 * 1024)})
    assert "exceeds limit 1048576 bytes" in text
    text = await fail(client, "update_state", name="bad/name", data={})
    assert "invalid_argument: name: must match ^[A-Za-z0-9._-]{1,128}$" in text and "(got 'bad/name')" in text
    text = await fail(client, "register_context", name="s", json_schema={"type": 12})
    assert "schema" in text and "not a valid JSON Schema" in text
    assert (await call(client, "get_state", name="c"))["revision"] == 1


async def test_validate_state_reports_every_error(client: Client) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"minimum": 3}}}
    await call(client, "register_context", name="c", json_schema=schema)
    ok = await call(client, "validate_state", name="c")
    assert ok == {"name": "c", "valid": True, "errors": []}
    bad = await call(client, "validate_state", name="c", data={"a": 1, "b": 1})
    assert bad["valid"] is False
    assert [e["pointer"] for e in bad["errors"]] == ["/data/a", "/data/b"]
    assert (await call(client, "get_state", name="c"))["revision"] == 1


async def test_history_diff_rollback(client: Client) -> None:
    await call(client, "register_context", name="c", state={"data": {"v": 1}})
    for v in (2, 3):
        await call(client, "update_state", name="c", data={"v": v})
    history = await call(client, "get_history", name="c", limit=2)
    assert [r["revision"] for r in history["revisions"]] == [3, 2]
    assert history["next_before"] == 2 and history["revisions"][0]["actor"] == "local"
    rest = await call(client, "get_history", name="c", before=2)
    assert [r["op"] for r in rest["revisions"]] == ["register"] and rest["next_before"] is None
    diff = await call(client, "diff_states", name="c", from_revision=1)
    assert diff["to_revision"] == 3 and diff["patch"] == [{"op": "replace", "path": "/data/v", "value": 3}]
    rolled = await call(client, "rollback_state", name="c", revision=1, expected_revision=3)
    assert rolled["revision"] == 4 and rolled["op"] == "rollback"
    assert (await call(client, "get_state", name="c"))["state"]["data"] == {"v": 1}
    text = await fail(client, "rollback_state", name="c", revision=2, expected_revision=3)
    assert "is at revision 4" in text


async def test_list_contexts_paginates(client: Client) -> None:
    for i in range(5):
        await call(client, "register_context", name=f"p{i}")
    first = await call(client, "list_contexts", limit=2)
    assert [c["name"] for c in first["contexts"]] == ["p0", "p1"] and first["next_cursor"]
    second = await call(client, "list_contexts", limit=2, cursor=first["next_cursor"])
    assert [c["name"] for c in second["contexts"]] == ["p2", "p3"]
    text = await fail(client, "list_contexts", limit=500)
    assert "limit" in text and "100" in text
    text = await fail(client, "list_contexts", cursor="garbage!")
    assert "cursor: not a cursor this server issued" in text


async def test_unregister_and_reregister(client: Client) -> None:
    await call(client, "register_context", name="c")
    await call(client, "update_state", name="c", data={"x": 1})
    gone = await call(client, "unregister_context", name="c", expected_revision=2)
    assert gone["revision"] == 3 and gone["unregistered"] is True
    text = await fail(client, "get_state", name="c")
    assert "no context named 'c'" in text
    text = await fail(client, "unregister_context", name="c")
    assert "no context named 'c'" in text
    again = await call(client, "register_context", name="c")
    assert again["revision"] == 4


async def test_a_bug_is_answered_with_an_error_id_not_a_traceback(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    await call(client, "register_context", name="c")

    async def broken(self: StateManager, name: str) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(StateManager, "get", broken)
    text = await fail(client, "get_context", name="c")
    assert re.search(r"internal error [0-9a-f]{12} in get_context: this is a bug in groundhog-mcp", text), text
    assert "secret internal detail" not in text
    monkeypatch.undo()
    assert (await call(client, "get_context", name="c"))["revision"] == 1


async def test_argument_errors_name_field_and_rule_without_noise(client: Client) -> None:
    cases = [
        ("register_context", {"name": "a", "version": "1.0"}, "version: must be a semantic version like 1.0.0"),
        ("update_state", {"name": "a", "expected_revision": -1}, "expected_revision: input should be greater than"),
        ("update_state", {"name": "a", "data": [1]}, "data: expected object, got array"),
        ("update_state", {"name": "a", "patch": [{"op": "bogus", "path": "/x"}]}, "patch.0.op: input should be 'add'"),
        ("list_contexts", {"limit": 1000}, "limit: input should be less than or equal to 100 (got 1000)"),
        ("get_state", {}, "name: is required"),
        ("register_context", {"name": "a", "state": {"data": {}, "bogus": 1}}, "state.bogus: is not an accepted field"),
        (
            "get_state",
            {"name": "a", "nmae": "b"},
            "nmae: not accepted by get_state (accepted: name, revision, path, as_of, fields, offset, limit)",
        ),
    ]
    for tool, arguments, expected in cases:
        text = await fail(client, tool, **arguments)
        assert expected in text, text
        assert "pydantic" not in text and "input_value" not in text


async def test_large_states_are_read_in_parts(client: Client) -> None:
    big = {"notes": "n" * 200_000, "log": ["x" * 1000] * 100, "small": {"a": 1}}
    await call(client, "register_context", name="big", state={"data": big})
    whole = await call(client, "get_state", name="big")
    assert "state" not in whole and whole["revision"] == 1
    too_large = whole["too_large"]
    assert too_large["limit"] == 256 * 1024 and too_large["bytes"] > too_large["limit"]
    assert {p["path"]: p["type"] for p in too_large["parts"]} == {
        "/notes": "string",
        "/log": "array",
        "/small": "object",
    }
    assert "read its parts one at a time" in too_large["hint"] and "path=" in too_large["hint"]
    part = await call(client, "get_state", name="big", path="/small")
    assert part["value"] == {"a": 1} and "too_large" not in part
    assert (await call(client, "get_state", name="big", path="/log/3"))["value"] == "x" * 1000
    resource = await client.read_resource("groundhog://contexts/big/state")
    document = json.loads(resource.contents[0].text)  # type: ignore[union-attr]
    assert "state" not in document and document["too_large"]["parts"][0]["path"] == "/notes"


async def test_a_huge_diff_is_answered_by_its_paths(client: Client) -> None:
    await call(client, "register_context", name="h")
    written = await call(client, "update_state", name="h", data={"blob": "y" * 100_000})
    assert written["patch_truncated"] is True
    assert written["patch"] == [{"op": "add", "path": "/data/blob"}]
    small = await call(client, "update_state", name="h", merge_patch={"k": 1})
    assert small["patch_truncated"] is False and small["patch"] == [{"op": "add", "path": "/data/k", "value": 1}]
