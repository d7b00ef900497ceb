"""The official MCP Inspector CLI and conformance suite against groundhog-mcp (.ci/mcp-conformance).

The script installs Node 22 and both tools from the npm registry into .ci/node-tools once
(cached), then runs them; it fails with a clear message when the registry is unreachable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import server_command

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "mcp-conformance"
TIMEOUT_S = 900  # a cold npm install included


def test_inspector_cli_and_conformance_scenarios() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROUNDHOG_")}
    env |= {"GROUNDHOG_COMMAND": server_command(), "GROUNDHOG_PYTHON": sys.executable}
    if "GROUNDHOG_NODE_TOOLS" in os.environ:
        env["GROUNDHOG_NODE_TOOLS"] = os.environ["GROUNDHOG_NODE_TOOLS"]
    result = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=TIMEOUT_S, env=env, check=False
    )
    print(result.stdout[-6000:])
    assert result.returncode == 0, (
        f".ci/mcp-conformance failed (exit {result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-3000:]}"
    )
