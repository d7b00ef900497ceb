"""The merge_states tool through the SDK's in-memory client, on both protocol eras."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer

from groundhog_mcp.app import Settings, create_server
from groundhog_mcp.server import AppContext
from groundhog_mcp.server.merge_tool import MAX_LISTED, register_merge_tool
from tests.server.conftest import call, fail


@pytest.fixture
def server(db_path: Path) -> MCPServer[AppContext]:
    """The application server with merge_states, whether or not build_server adds it already."""
    built = create_server(Settings(database=str(db_path), tools="all"))
    if built._tool_manager.get_tool("merge_states") is None:  # pyright: ignore[reportPrivateUsage]
        register_merge_tool(built)
    return built


async def _plan(client: Client) -> None:
    """plan: r1 {title: a, n: 1, tags: [x]}, r2 title b, r3 n 2."""
    await call(client, "register_context", name="plan", state={"data": {"title": "a", "n": 1, "tags": ["x"]}})
    await call(client, "update_state", name="plan", merge_patch={"title": "b"}, expected_revision=1)
    await call(client, "update_state", name="plan", merge_patch={"n": 2}, expected_revision=2)


async def _revision(client: Client, name: str) -> tuple[int, dict[str, Any]]:
    state = await call(client, "get_state", name=name)
    return state["revision"], state["state"]["data"]


async def test_tool_is_listed_for_a_model(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    tool = tools["merge_states"]
    assert tool.description and "three_way" in tool.description and "dry_run" in tool.description
    assert tool.annotations is not None
    assert tool.annotations.read_only_hint is False and tool.annotations.destructive_hint is False
    assert tool.output_schema is not None and "conflicts" in tool.output_schema["properties"]
    properties = tool.input_schema["properties"]
    assert set(properties) == {
        "inputs",
        "strategy",
        "base",
        "reducers",
        "on_conflict",
        "target",
        "expected_revision",
        "dry_run",
        "lease_token",
    }
    assert tool.input_schema["required"] == ["inputs"]


async def test_ordered_merge_of_contexts_and_inline_states(client: Client) -> None:
    await call(client, "register_context", name="a", state={"data": {"x": 1, "cfg": {"p": 1}}, "metadata": {"by": "a"}})
    out = await call(
        client,
        "merge_states",
        inputs=[
            {"context": "a"},
            {"state": {"data": {"x": 2, "cfg": {"q": 2}}, "version": "1.1.0"}},
            {"state": {"data": {"cfg": {"p": None}}}},
        ],
    )
    assert out["strategy"] == "ordered" and out["written"] is False and out["dry_run"] is False
    assert out["state"]["data"] == {"x": 2, "cfg": {"q": 2}}
    assert out["state"]["metadata"] == {"by": "a"} and out["state"]["version"] == "1.1.0"
    inline = {"context": None, "revision": None}
    assert out["inputs"] == [{"context": "a", "revision": 1}, inline, inline]
    assert {p["path"]: (p["inputs"], p["winner"]) for p in out["provenance"]} == {
        "/data/x": ([0, 1], 1),
        "/data/cfg": ([0, 1, 2], 1),  # {p: 1} + {q: 2} + {p: null} is input 1's {q: 2}
    }
    assert out["conflicts"] == [] and out["base"] is None


async def test_three_way_with_automatic_base_and_explicit_base(client: Client) -> None:
    await _plan(client)
    auto = await call(
        client, "merge_states", inputs=[{"context": "plan", "revision": 2}, {"context": "plan"}], strategy="three_way"
    )
    assert auto["base"] == {"context": "plan", "revision": 2}
    assert auto["state"]["data"] == {"title": "b", "n": 2, "tags": ["x"]}
    explicit = await call(
        client,
        "merge_states",
        inputs=[{"context": "plan", "revision": 2}, {"state": {"data": {"title": "a", "n": 1, "tags": ["x", "y"]}}}],
        strategy="three_way",
        base={"context": "plan", "revision": 1},
    )
    assert explicit["state"]["data"] == {"title": "b", "n": 1, "tags": ["x", "y"]}


async def test_three_way_conflicts_fail_ours_theirs(client: Client) -> None:
    await _plan(client)
    args: dict[str, Any] = {
        "inputs": [{"context": "plan"}, {"state": {"data": {"title": "c", "n": 1}}}],
        "strategy": "three_way",
        "base": {"context": "plan", "revision": 1},
    }
    text = await fail(client, "merge_states", **args)
    assert "on_conflict: 'fail' and the merge found 1 conflict: /data/title both_modified" in text
    assert "both_modified; pass on_conflict='ours' or 'theirs'" in text and '"b"' not in text
    ours = await call(client, "merge_states", on_conflict="ours", **args)
    theirs = await call(client, "merge_states", on_conflict="theirs", **args)
    # theirs deleted tags, ours kept them unchanged: a one-sided change, not a conflict
    assert ours["state"]["data"] == {"title": "b", "n": 2}
    assert theirs["state"]["data"] == {"title": "c", "n": 2}
    assert ours["conflicts"] == [
        {"path": "/data/title", "kind": "both_modified", "base": "a", "ours": "b", "theirs": "c", "absent": []}
    ]
    assert ours["conflict_count"] == 1


async def test_reducers_strategy_and_reducers_in_three_way(client: Client) -> None:
    out = await call(
        client,
        "merge_states",
        inputs=[
            {"state": {"data": {"visits": 2, "log": ["a"], "tags": ["x"]}}},
            {"state": {"data": {"visits": 3, "log": ["b"], "tags": ["x", "y"], "name": "n"}}},
        ],
        strategy="reducers",
        reducers={"/data/visits": "sum", "/data/log": "append", "/data/tags": "union"},
    )
    assert out["state"]["data"] == {"visits": 5, "log": ["a", "b"], "tags": ["x", "y"], "name": "n"}
    await _plan(client)
    out = await call(
        client,
        "merge_states",
        inputs=[{"context": "plan"}, {"state": {"data": {"title": "a", "n": 4, "tags": ["x", "z"]}}}],
        strategy="three_way",
        base={"context": "plan", "revision": 1},
        reducers={"/data/n": "sum", "/data/tags": "union"},
    )
    assert out["state"]["data"] == {"title": "b", "n": 5, "tags": ["x", "z"]}


async def test_target_write_with_cas(client: Client) -> None:
    await _plan(client)
    args: dict[str, Any] = {
        "inputs": [{"context": "plan"}, {"state": {"data": {"title": "a", "n": 1, "tags": ["x"], "done": True}}}],
        "strategy": "three_way",
        "base": {"context": "plan", "revision": 1},
        "target": "plan",
    }
    text = await fail(client, "merge_states", expected_revision=2, **args)
    assert "expected_revision: conflict, expected revision 2 but context 'plan' is at revision 3" in text
    assert await _revision(client, "plan") == (3, {"title": "b", "n": 2, "tags": ["x"]})
    out = await call(client, "merge_states", expected_revision=3, **args)
    assert out["written"] is True and out["target"] == "plan"
    assert (out["revision"], out["previous_revision"]) == (4, 3) and out["sequence"] == 4
    assert out["changed_paths"] == ["/data/done"]
    assert await _revision(client, "plan") == (4, {"title": "b", "n": 2, "tags": ["x"], "done": True})
    history = await call(client, "get_history", name="plan", limit=1)
    assert history["revisions"][0]["op"] == "merge"


async def test_dry_run_writes_nothing(client: Client) -> None:
    await _plan(client)
    conflicting = await call(
        client,
        "merge_states",
        inputs=[{"context": "plan"}, {"state": {"data": {"title": "c"}}}],
        strategy="three_way",
        base={"context": "plan", "revision": 1},
        target="plan",
        expected_revision=3,
        dry_run=True,
    )
    assert conflicting["state"] is None and conflicting["dry_run"] is True and conflicting["written"] is False
    assert [c["kind"] for c in conflicting["conflicts"]] == ["both_modified", "modify_delete"]
    assert conflicting["provenance"] == []  # no winner until the conflicts are resolved
    clean = await call(
        client,
        "merge_states",
        inputs=[{"context": "plan"}, {"state": {"data": {"extra": 1}}}],
        target="plan",
        expected_revision=3,
        dry_run=True,
    )
    assert clean["state"]["data"] == {"title": "b", "n": 2, "tags": ["x"], "extra": 1}
    assert clean["written"] is False and clean["revision"] is None
    assert await _revision(client, "plan") == (3, {"title": "b", "n": 2, "tags": ["x"]})
    assert len((await call(client, "get_history", name="plan"))["revisions"]) == 3


async def test_long_conflict_lists_are_capped(client: Client) -> None:
    base = {f"k{i}": 0 for i in range(MAX_LISTED + 20)}
    out = await call(
        client,
        "merge_states",
        inputs=[{"state": {"data": {k: 1 for k in base}}}, {"state": {"data": {k: 2 for k in base}}}],
        strategy="three_way",
        base={"state": {"data": base}},
        on_conflict="theirs",
        dry_run=True,
    )
    assert out["conflict_count"] == MAX_LISTED + 20 and len(out["conflicts"]) == MAX_LISTED
    assert out["provenance_count"] == MAX_LISTED + 20 and len(out["provenance"]) == MAX_LISTED


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"inputs": [{"context": "plan"}]}, "invalid_argument: inputs: list should have at least 2 items"),
        (
            {"inputs": [{"context": "plan", "state": {"data": {}}}, {"context": "plan"}]},
            "inputs[0]: give exactly one of context (a context at a revision) or state (inline)",
        ),
        (
            {"inputs": [{"context": "plan"}, {"state": {"data": {}}, "revision": 2}]},
            "inputs[1]: revision goes with context, not with an inline state",
        ),
        ({"inputs": [{"context": "plan"}, {"context": "nope"}]}, "inputs[1].context: no context named 'nope'"),
        (
            {"inputs": [{"context": "plan"}, {"context": "plan", "revision": 9}]},
            "inputs[1].revision: context 'plan' has no revision 9 (current revision is 3)",
        ),
        (
            {"inputs": [{"context": "plan"}, {"state": {"data": {}}}], "strategy": "three_way"},
            "strategy: three_way needs a base: pass base",
        ),
        (
            {"inputs": [{"context": "plan"}, {"context": "plan"}], "base": {"context": "plan", "revision": 1}},
            "base: only strategy three_way uses a base; got strategy 'ordered'",
        ),
        (
            {"inputs": [{"context": "plan"}, {"context": "plan"}], "reducers": {"n": "sum"}},
            "reducers.n: must be a JSON",
        ),
        (
            {"inputs": [{"context": "plan"}, {"context": "plan"}], "reducers": {"/data/n": "avg"}},
            "invalid_argument: reducers./data/n: input should be 'append', 'union', 'sum', 'max', 'min' or 'last'",
        ),
        (
            {"inputs": [{"context": "plan"}, {"state": {"data": {"title": 1}}}], "reducers": {"/data/title": "sum"}},
            "reducers./data/title: sum needs numbers, got a string in inputs[0]; nothing was merged",
        ),
        (
            {"inputs": [{"context": "plan"}, {"context": "plan"}], "target": "gone", "expected_revision": 1},
            "target: no context named 'gone'; register it first, or pass expected_revision=0 to create it",
        ),
        (
            {"inputs": [{"context": "plan"}, {"context": "plan"}], "expected_revision": 3},
            "expected_revision: only used with target",
        ),
        (
            {
                "inputs": [
                    {"context": "plan"},
                    {"state": {"data": {"n": functools.reduce(lambda d, _: {"a": d}, range(64), {})}}},
                ]
            },
            "inputs[1].data.n.a.a.a",
        ),
        (
            {"inputs": [{"state": {"data": {"a": "x" * 600_000}}}, {"state": {"data": {"b": "y" * 600_000}}}]},
            "merged: serialised size 1200",
        ),
    ],
)
async def test_errors_are_clear_and_change_nothing(client: Client, arguments: dict[str, Any], message: str) -> None:
    await _plan(client)
    text = await fail(client, "merge_states", **arguments)
    assert message in text, text
    assert await _revision(client, "plan") == (3, {"title": "b", "n": 2, "tags": ["x"]})


async def test_schema_of_the_target_is_enforced(client: Client) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    await call(client, "register_context", name="s", state={"data": {"n": 1}}, json_schema=schema)
    text = await fail(client, "merge_states", inputs=[{"context": "s"}, {"state": {"data": {"n": "one"}}}], target="s")
    assert "state.data.n: must be of type 'integer' (got a string) (JSON Schema rule 'type')" in text
    assert await _revision(client, "s") == (1, {"n": 1})
