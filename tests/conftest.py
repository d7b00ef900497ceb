"""Shared fixtures: a real SQLite file per test, a started StateManager, an in-memory MCP client."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
from mcp.server.mcpserver import MCPServer

from groundhog_mcp import StateManager
from groundhog_mcp.app import Settings, create_server
from groundhog_mcp.server import AppContext


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "groundhog.sqlite"


@pytest.fixture
async def manager(db_path: Path) -> AsyncGenerator[StateManager]:
    async with StateManager.open(db_path) as opened:
        yield opened


@pytest.fixture
def server(db_path: Path) -> MCPServer[AppContext]:
    return create_server(Settings(database=str(db_path)))
