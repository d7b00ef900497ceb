"""Start-up cost: a server imports only what its transport and its contexts need.

Clients that start a process per call pay the import time on every call (issue 14's start-up
target is measured by benchmarks/bench_peer.py; this holds the parts of it a test can see).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys, anyio
from mcp import Client
from groundhog_mcp.app import Settings, create_server
from groundhog_mcp.service import StateManager
import groundhog_mcp.cli.commands, groundhog_mcp.server.stdio

async def main():
    async with Client(create_server(Settings(database=sys.argv[1]))) as client:
        await client.list_tools()  # (the SDK's client imports jsonschema on its first call_tool)
    async with StateManager.open(sys.argv[1]) as manager:
        await manager.update("plan", data={"a": 1}, expected_revision=0)
        await manager.read("plan")
    print(sorted({m.split(".")[0] for m in sys.modules} & {"jsonschema", "referencing", "re2", "rpds"}))
    print(len(create_server(Settings(database=sys.argv[1]))._tool_manager.list_tools()))

anyio.run(main)
"""


def test_a_server_without_schemas_never_imports_jsonschema_and_builds_only_its_profile(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "s.sqlite")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-2:] == ["[]", "8"]  # before them: log lines (logging is not set up here)
