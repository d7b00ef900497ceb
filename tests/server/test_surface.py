"""Tool profiles and the size of the tool surface a model is sent (name + description + inputSchema)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client
from mcp_types import Tool

from groundhog_mcp.app import Settings, create_server, load_settings
from groundhog_mcp.errors import InitializationError
from groundhog_mcp.profiles import ALL_TOOLS, PROFILES
from groundhog_mcp.server.surface import compact_schema, model_view_size
from tests.cli_in_process import run_cli
from tests.server.conftest import call

# Budgets from issue 15, in bytes of compact JSON.
DEFAULT_BUDGET = 12_000
ALL_BUDGET = 20_000


async def _tools(db_path: Path, tools: str | None = None) -> list[Tool]:
    settings = Settings(database=str(db_path)) if tools is None else Settings(database=str(db_path), tools=tools)
    async with Client(create_server(settings)) as client:
        return (await client.list_tools()).tools


def _sizes(tools: list[Tool]) -> dict[str, int]:
    return model_view_size(t.model_dump(by_alias=True, mode="json") for t in tools)


async def test_default_profile_is_the_agent_workflow(db_path: Path) -> None:
    names = [t.name for t in await _tools(db_path)]
    assert names == [
        "register_context",
        "list_contexts",
        "get_state",
        "update_state",
        "get_history",
        "diff_states",
        "rollback_state",
        "wait_for_change",
        "lease",
        "find_contexts",
    ]


async def test_all_lists_every_registered_tool_in_order(db_path: Path) -> None:
    assert [t.name for t in await _tools(db_path, "all")] == list(ALL_TOOLS)
    assert len(ALL_TOOLS) == 22


async def test_explicit_list_and_a_left_out_tool_is_unknown(db_path: Path) -> None:
    server = create_server(Settings(database=str(db_path), tools=" update_state,get_state ,emit_event"))
    async with Client(server) as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["get_state", "update_state", "emit_event"]
        await call(client, "update_state", name="n", data={"a": 1}, expected_revision=0)
        left_out = await client.call_tool("register_context", {"name": "m"})
        assert left_out.is_error
        assert [getattr(c, "text", None) for c in left_out.content] == ["Unknown tool: register_context"]
        assert (await call(client, "get_state", name="n"))["revision"] == 1


async def test_default_profile_leaves_out_the_operator_tools(db_path: Path) -> None:
    async with Client(create_server(Settings(database=str(db_path)))) as client:
        for tool in ("emit_event", "merge_states", "audit_log", "migrate_context", "unregister_context"):
            result = await client.call_tool(tool, {"name": "x"})
            assert result.is_error and getattr(result.content[0], "text", None) == f"Unknown tool: {tool}"


def test_unknown_tool_name_is_refused_at_start_listing_the_valid_ones(tmp_path: Path) -> None:
    config = tmp_path / "empty.toml"
    config.write_text("")
    for flags, env in (({"tools": "get_state,bogus"}, {}), ({}, {"GROUNDHOG_TOOLS": "bogus"})):
        with pytest.raises(InitializationError) as raised:
            load_settings(flags, env=env, config_file=config)
        text = str(raised.value)
        assert text.startswith("config: tools: ") and "unknown tool bogus; give default or all" in text, text
        assert ", ".join(ALL_TOOLS) in text
    config.write_text('tools = "all"\n')
    assert load_settings({}, env={}, config_file=config).tools == "all"
    with pytest.raises(InitializationError, match="names no tool"):
        load_settings({"tools": " , "}, env={}, config_file=None)


def test_cli_refuses_an_unknown_tool_before_serving(tmp_path: Path) -> None:
    database = str(tmp_path / "g.sqlite")
    for command in (["serve"], []):  # serving is also the default command
        done = run_cli(*command, "--tools", "get_state,nope", "--database", database, check=False)
        assert done.returncode == 2, done.stderr
        assert "unknown tool nope" in done.stderr and "register_context" in done.stderr
        assert done.stdout == ""
    assert not Path(database).exists()  # refused before the database was opened


@pytest.mark.parametrize(("profile", "budget"), [("default", DEFAULT_BUDGET), ("all", ALL_BUDGET)])
async def test_tool_surface_budget(db_path: Path, profile: str, budget: int) -> None:
    sizes = _sizes(await _tools(db_path, profile))
    assert set(sizes) == set(PROFILES[profile])
    total = sum(sizes.values())
    per_tool = ", ".join(f"{name} {size}" for name, size in sorted(sizes.items(), key=lambda item: -item[1]))
    print(f"tools={profile}: {total} bytes ({per_tool})")
    assert total <= budget, f"tools={profile}: {total} bytes > {budget}: {per_tool}"


def test_compact_schema_keeps_meaning_and_drops_noise() -> None:
    schema = {
        "title": "fArguments",
        "type": "object",
        "properties": {
            "title": {"title": "Title", "type": "string"},
            "n": {
                "anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}],
                "default": None,
                "description": "outer",
                "title": "N",
            },
            "name": {"anyOf": [{"type": "string", "description": "inner"}, {"type": "null"}], "description": "use"},
            "ref": {"anyOf": [{"$ref": "#/$defs/M"}, {"type": "null"}], "default": None},
            "data": {"additionalProperties": True, "type": "object", "default": {}},
        },
        "$defs": {"M": {"description": "docstring", "title": "M", "type": "object", "additionalProperties": False}},
    }
    assert compact_schema(schema) == {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "n": {"type": ["integer", "null"], "minimum": 0, "description": "outer"},
            "name": {"type": ["string", "null"], "description": "use"},
            "ref": {"anyOf": [{"$ref": "#/$defs/M"}, {"type": "null"}]},
            "data": {"type": "object", "default": {}},
        },
        "$defs": {"M": {"type": "object", "additionalProperties": False}},
    }


def test_compact_schema_shortens_what_a_pattern_already_says() -> None:
    from groundhog_mcp.models import NAME_PATTERN, SEMVER_PATTERN

    schema = {
        "type": "object",
        "description": "Two\n    lines",
        "properties": {
            "name": {"type": "string", "pattern": NAME_PATTERN, "minLength": 1, "maxLength": 128},
            "other": {"type": "string", "pattern": "^a+$", "minLength": 1, "maxLength": 128},
            "version": {"type": "string", "pattern": SEMVER_PATTERN},
        },
    }
    assert compact_schema(schema) == {
        "type": "object",
        "description": "Two lines",
        "properties": {
            "name": {"type": "string", "pattern": NAME_PATTERN},
            "other": {"type": "string", "pattern": "^a+$", "minLength": 1, "maxLength": 128},
            "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+"},
        },
    }


async def test_a_version_the_short_pattern_lets_through_is_still_refused(db_path: Path) -> None:
    async with Client(create_server(Settings(database=str(db_path)))) as client:
        result = await client.call_tool("register_context", {"name": "v", "version": "1.0.0-01"})
        text = getattr(result.content[0], "text", "")
        assert result.is_error and "version: must be a semantic version like 1.0.0" in text, text
