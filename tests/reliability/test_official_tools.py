"""The official MCP Inspector CLI and conformance suite against groundhog-mcp (.ci/mcp-conformance).

The script installs Node 22 and both tools from the npm registry into .ci/node-tools once
(cached), then runs them; it fails with a clear message when the registry is unreachable.
Each of its parts is a test of its own: they share nothing (each run has its own databases and
server processes), so pytest-xdist runs them side by side instead of one test running ~25
Node and server starts in a row.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import server_command

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "mcp-conformance"
TIMEOUT_S = 900  # a cold npm install included
# The script's parts (`.ci/mcp-conformance PART...`), read from the script itself: together, what it
# runs without arguments.
PARTS = next(
    line.removeprefix("ALL_PARTS=(").removesuffix(")").split()
    for line in SCRIPT.read_text(encoding="utf-8").splitlines()
    if line.startswith("ALL_PARTS=(")
)


@pytest.mark.parametrize("part", PARTS)
def test_inspector_cli_and_conformance_scenarios(part: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROUNDHOG_")}
    env |= {"GROUNDHOG_COMMAND": server_command(), "GROUNDHOG_PYTHON": sys.executable}
    if "GROUNDHOG_NODE_TOOLS" in os.environ:
        env["GROUNDHOG_NODE_TOOLS"] = os.environ["GROUNDHOG_NODE_TOOLS"]
    result = subprocess.run(
        ["bash", str(SCRIPT), part], capture_output=True, text=True, timeout=TIMEOUT_S, env=env, check=False
    )
    print(result.stdout[-6000:])
    assert result.returncode == 0, (
        f".ci/mcp-conformance {part}: exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-3000:]}"
    )
    if "nothing to check" in result.stdout:
        pytest.skip(f"the build under test has no transport for the {part} part")  # an older build
    summary = re.search(r"^== (\d+) passed, 0 failed$", result.stdout, re.MULTILINE)
    assert summary is not None and int(summary[1]) > 0, f".ci/mcp-conformance {part} checked nothing:\n{result.stdout}"
