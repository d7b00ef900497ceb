"""A server registers its tools from server/tool_schemas.json: what it lists must be what the SDK
would build from the code, byte for byte, and its tools must behave as the SDK's would."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer

from groundhog_mcp.profiles import PROFILES
from groundhog_mcp.server import build_server
from groundhog_mcp.server.tool_schemas import SCHEMAS_FILE, DeferredFuncMetadata, computed_schemas, render


@asynccontextmanager
async def _no_lifespan(server: MCPServer[Any], subscriptions: Any) -> AsyncGenerator[Any]:
    yield None


def test_the_published_schemas_are_what_the_code_builds() -> None:
    assert SCHEMAS_FILE.read_text(encoding="utf-8") == render(computed_schemas()), (
        "server/tool_schemas.json is stale: run `python tools/gen_docs.py`"
    )


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
@pytest.mark.parametrize("profile", ["default", "all"])
async def test_tools_list_is_byte_identical_to_the_sdks(mode: str, profile: str) -> None:
    listed: list[list[str]] = []
    for published in (True, False):
        server = build_server(_no_lifespan, version="0", tools=PROFILES[profile], published=published)
        async with Client(server, mode=mode) as client:  # pyright: ignore[reportArgumentType]
            result = await client.list_tools()
        listed.append([tool.model_dump_json(by_alias=True, exclude_none=True) for tool in result.tools])
    ours, sdks = listed
    assert [len(a) for a in ours] == [len(a) for a in sdks]
    assert ours == sdks


def test_a_served_tool_builds_its_models_at_its_first_call_only() -> None:
    server = build_server(_no_lifespan, version="0", tools=PROFILES["all"])
    tools = server._tool_manager.list_tools()  # pyright: ignore[reportPrivateUsage]
    assert [type(tool.fn_metadata) for tool in tools] == [DeferredFuncMetadata] * len(PROFILES["all"])
    metadata = tools[0].fn_metadata
    assert isinstance(metadata, DeferredFuncMetadata)
    assert metadata.validate_arguments({"name": "n"})["name"] == "n"
    built = metadata.built()
    assert built.output_schema == tools[0].output_schema  # the published one, with error results
    assert built.arg_model.model_config.get("strict") is True
    assert metadata.built() is built


def test_a_deferred_tool_is_the_sdks_tool_but_for_when_its_models_are_built() -> None:
    built = [
        build_server(_no_lifespan, version="0", tools=PROFILES["all"], published=published)._tool_manager.list_tools()  # pyright: ignore[reportPrivateUsage]
        for published in (True, False)
    ]
    ours, sdks = (
        [tool.model_dump(exclude={"fn_metadata"}) | {"output": tool.output_schema} for tool in tools] for tools in built
    )
    assert ours == sdks
    for deferred, sdk in zip(*built, strict=True):
        assert isinstance(deferred.fn_metadata, DeferredFuncMetadata)
        models = deferred.fn_metadata.built()
        assert models.arg_model.model_json_schema() == sdk.fn_metadata.arg_model.model_json_schema()
        assert models.output_model == sdk.fn_metadata.output_model
        assert models.wrap_output == sdk.fn_metadata.wrap_output
