"""find_contexts and the get_state projections through the MCP tools (in-memory SDK client)."""

from __future__ import annotations

from pathlib import Path

from mcp import Client

from groundhog_mcp.app import Settings, create_server
from groundhog_mcp.security.crypto import generate_key
from tests.server.conftest import call, fail


async def seed(client: Client) -> None:
    for name, data in {
        "task.1": {"status": "open", "priority": 2, "tags": ["home"], "title": "Buy milk and bread"},
        "task.2": {"status": "done", "priority": 5, "tags": ["work", "urgent"], "title": "Send the report"},
        "task.3": {"status": "open", "priority": 9, "tags": ["work"], "title": "Plan the offsite"},
        "note.1": {"text": "milk is in the fridge"},
    }.items():
        await call(client, "register_context", name=name, state={"data": data}, metadata={"kind": name[:4]})


async def test_find_contexts_filters_sorts_projects_and_pages(client: Client) -> None:
    await seed(client)
    found = await call(
        client,
        "find_contexts",
        where=[
            {"path": "/data/status", "op": "eq", "value": "open"},
            {"path": "/data/tags", "op": "contains", "value": "work"},
        ],
        fields=["/data/title", "/data/owner"],
    )
    assert [(c["name"], c["revision"], c["fields"], c["missing"]) for c in found["contexts"]] == [
        ("task.3", 1, {"data": {"title": "Plan the offsite"}}, ["/data/owner"])
    ]
    assert found["next_cursor"] is None
    first = await call(client, "find_contexts", prefix="task.", sort="/data/priority", order="desc", limit=2)
    assert [c["name"] for c in first["contexts"]] == ["task.3", "task.2"]
    assert first["contexts"][0]["fields"] is None and first["contexts"][0]["updated_at"].endswith("Z")
    rest = await call(
        client,
        "find_contexts",
        prefix="task.",
        sort="/data/priority",
        order="desc",
        limit=2,
        cursor=first["next_cursor"],
    )
    assert [c["name"] for c in rest["contexts"]] == ["task.1"] and rest["next_cursor"] is None
    milk = await call(client, "find_contexts", text="milk")
    assert [c["name"] for c in milk["contexts"]] == ["note.1", "task.1"]
    kind = await call(client, "find_contexts", where=[{"path": "/context_metadata/kind", "op": "eq", "value": "note"}])
    assert [c["name"] for c in kind["contexts"]] == ["note.1"]


async def test_find_contexts_errors_carry_codes_and_name_the_field(client: Client) -> None:
    text = await fail(client, "find_contexts", where=[{"path": "/data/x", "op": "near", "value": 1}])
    assert "where[0].op: must be one of eq, ne, lt, le, gt, ge, in, contains, exists; got 'near'" in text
    result = await client.call_tool("find_contexts", {"where": [{"path": "/data/x", "op": "gt", "value": None}]})
    assert result.is_error and result.structured_content is not None
    assert result.structured_content["error"]["code"] == "invalid_argument"


async def test_with_encryption_on_a_state_search_is_refused_as_sealed(tmp_path: Path) -> None:
    settings = Settings(database=str(tmp_path / "db.sqlite"), encryption_key=generate_key())
    async with Client(create_server(settings)) as client:
        await seed(client)
        result = await client.call_tool("find_contexts", {"text": "milk"})
        assert result.is_error and result.structured_content is not None
        error = result.structured_content["error"]
        assert error["code"] == "sealed" and error["retryable"] is False
        assert "text: encryption at rest is on, so state is sealed and cannot be searched" in error["message"]
        assert "milk" not in error["message"].split("cannot be searched")[1]
        by_kind = await call(
            client, "find_contexts", where=[{"path": "/context_metadata/kind", "op": "eq", "value": "task"}]
        )
        assert [c["name"] for c in by_kind["contexts"]] == ["task.1", "task.2", "task.3"]


async def test_get_state_fields_return_a_sparse_copy(client: Client) -> None:
    await seed(client)
    out = await call(client, "get_state", name="task.2", fields=["/title", "/tags/1", "/nope"])
    assert out["value"] == {"title": "Send the report", "tags": {"1": "urgent"}}
    assert out["missing"] == ["/nope"] and "state" not in out
    text = await fail(client, "get_state", name="task.2", fields=["/title"], path="/title")
    assert "fields: give fields or path (with offset/limit), not both" in text


async def test_get_state_pages_an_array_to_its_ends(client: Client) -> None:
    await call(client, "register_context", name="log", state={"data": {"lines": list(range(10)), "n": 1}})
    page = await call(client, "get_state", name="log", path="/lines", offset=0, limit=4)
    assert (page["value"], page["length"], page["offset"]) == ([0, 1, 2, 3], 10, 0)
    last = await call(client, "get_state", name="log", path="/lines", offset=8, limit=4)
    assert (last["value"], last["length"]) == ([8, 9], 10)
    past = await call(client, "get_state", name="log", path="/lines", offset=10)
    assert (past["value"], past["length"], past["offset"]) == ([], 10, 10)
    assert "path: offset/limit need an array; the value at path is number" in await fail(
        client, "get_state", name="log", path="/n", limit=2
    )
    assert "path: offset/limit page an array: give its path" in await fail(client, "get_state", name="log", offset=1)


async def test_the_too_large_outline_points_to_fields_and_paging(client: Client) -> None:
    big = {"log": ["x" * 1000] * 300, "small": {"a": 1}}
    await call(client, "register_context", name="big", state={"data": big})
    whole = await call(client, "get_state", name="big")
    hint = whole["too_large"]["hint"]
    assert "fields=[paths]" in hint and "path, offset and limit" in hint
    page = await call(client, "get_state", name="big", path="/log", offset=299, limit=5)
    assert page["value"] == ["x" * 1000] and page["length"] == 300
    sliced = await call(client, "get_state", name="big", path="/log", limit=1000)
    assert sliced["value"] is None and "path, offset and limit" in sliced["too_large"]["hint"]


async def test_find_contexts_text_follows_update_state(client: Client) -> None:
    await seed(client)
    milk = ["note.1", "task.1"]
    await call(client, "update_state", name="task.1", merge_patch={"priority": 3})  # no string: the index is kept
    await call(client, "update_state", name="task.1", patch=[{"op": "replace", "path": "/tags", "value": [1]}])
    texts = {
        w: [c["name"] for c in (await call(client, "find_contexts", text=w))["contexts"]] for w in ("milk", "home")
    }
    assert texts == {"milk": milk, "home": []}
    await call(client, "update_state", name="task.1", merge_patch={"title": "Buy bread", "priority": "high"})
    texts = {
        w: [c["name"] for c in (await call(client, "find_contexts", text=w))["contexts"]] for w in ("milk", "high")
    }
    assert texts == {"milk": ["note.1"], "high": ["task.1"]}
