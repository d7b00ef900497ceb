from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult

from groundhog_mcp.server import AppContext


@pytest.fixture(params=["legacy", "2026-07-28"])
async def client(request: pytest.FixtureRequest, server: MCPServer[AppContext]) -> AsyncGenerator[Client]:
    """An in-memory SDK client, once per protocol era."""
    async with Client(server, mode=request.param) as connected:
        yield connected


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool that must succeed; return its structured result."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, _text(result)
    assert result.structured_content is not None
    return result.structured_content


async def fail(client: Client, tool: str, **arguments: Any) -> str:
    """Call a tool that must fail with a deliberate, explained error; return the text."""
    result = await client.call_tool(tool, arguments)
    text = _text(result)
    assert result.is_error, text
    assert text.startswith(f"Error executing tool {tool}: "), text
    assert "Traceback" not in text
    return text


def _text(result: CallToolResult) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)
