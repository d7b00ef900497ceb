"""An MCP SDK v1 client (protocol 2025-11-25) against our server.

Agent frameworks such as langchain-mcp-adapters and mcp-use pin ``mcp<2``: their users reach
groundhog-mcp through a v1 ``ClientSession``. The v1 SDK cannot share a venv with our v2, so
a session fixture builds a separate venv once (cached by requirement, Python version and platform
under ``.ci/cache/v1-client-venv/``, ignored by git) and the test runs a client script with that
venv's python.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.client_venv import ClientVenvError, build_client_venv
from tests.e2e.harness import HANDSHAKE_PROTOCOL_VERSION, TOOL_NAMES, json_log_lines, server_command, server_env

pytestmark = pytest.mark.e2e

V1_REQUIREMENT = "mcp>=1.23,<2"
CLIENT_TIMEOUT_S = 120

CLIENT_SCRIPT = textwrap.dedent(
    '''
    """A v1 ClientSession session against groundhog-mcp; prints a JSON summary on stdout."""
    import json
    import os
    import sys
    from datetime import timedelta
    from importlib.metadata import version

    import anyio
    from mcp import ClientSession, StdioServerParameters, types
    from mcp.client.stdio import stdio_client

    WAIT_S = 20


    def text_of(result):
        return "\\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


    async def main(command, database, stderr_path):
        summary = {"mcp_version": version("mcp"), "transport_errors": []}
        list_changed = {"count": 0, "event": anyio.Event()}

        async def on_message(message):
            if isinstance(message, Exception):
                summary["transport_errors"].append(repr(message))
            elif isinstance(message, types.ServerNotification) and isinstance(
                message.root, types.ResourceListChangedNotification
            ):
                list_changed["count"] += 1
                list_changed["event"].set()

        async def wait_list_changed(at_least):
            with anyio.move_on_after(WAIT_S):
                while list_changed["count"] < at_least:
                    list_changed["event"] = anyio.Event()
                    await list_changed["event"].wait()
            return list_changed["count"] >= at_least

        # The test's private config and data dirs (the SDK passes only HOME, PATH, ... by default).
        private_dirs = {k: v for k, v in os.environ.items() if k.startswith("XDG_")}
        arguments = ["--database", database, "--tools", "all"]
        params = StdioServerParameters(command=command, args=arguments, env=private_dirs)
        with open(stderr_path, "w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(
                    read, write, read_timeout_seconds=timedelta(seconds=WAIT_S), message_handler=on_message
                ) as session:
                    init = await session.initialize()
                    summary["protocol_version"] = init.protocolVersion
                    summary["server_name"] = init.serverInfo.name
                    resources = init.capabilities.resources
                    summary["resources_list_changed_capability"] = bool(resources and resources.listChanged)
                    tools = await session.list_tools()
                    summary["tools"] = sorted(tool.name for tool in tools.tools)

                    registered = await session.call_tool(
                        "register_context", {"name": "v1-agent", "state": {"data": {"step": 0}}}
                    )
                    summary["register"] = {"is_error": registered.isError, "out": registered.structuredContent}
                    summary["list_changed_after_register"] = await wait_list_changed(1)

                    updated = await session.call_tool(
                        "update_state", {"name": "v1-agent", "data": {"step": 1}, "expected_revision": 1}
                    )
                    summary["update"] = {"is_error": updated.isError, "out": updated.structuredContent}

                    read_back = await session.call_tool("get_state", {"name": "v1-agent"})
                    summary["read"] = {"is_error": read_back.isError, "out": read_back.structuredContent}

                    stale = await session.call_tool(
                        "update_state", {"name": "v1-agent", "data": {"step": 99}, "expected_revision": 1}
                    )
                    summary["conflict"] = {"is_error": stale.isError, "text": text_of(stale)}

                    merged = await session.call_tool(
                        "update_state", {"name": "v1-agent", "merge_patch": {"done": True}, "expected_revision": 2}
                    )
                    summary["merge"] = {"is_error": merged.isError, "out": merged.structuredContent}

                    removed = await session.call_tool("unregister_context", {"name": "v1-agent"})
                    summary["unregister"] = {"is_error": removed.isError, "out": removed.structuredContent}
                    summary["list_changed_after_unregister"] = await wait_list_changed(2)

                    gone = await session.call_tool("get_state", {"name": "v1-agent"})
                    summary["gone"] = {"is_error": gone.isError, "text": text_of(gone)}
        print(json.dumps(summary))


    anyio.run(main, *sys.argv[1:4])
    '''
)


def build_v1_client_venv() -> Path:
    """The python of a venv with the v1 MCP SDK (tests/e2e/client_venv.py). ``.ci/run`` builds it
    while it lints (``python -m tests.e2e.test_v1_client``)."""
    return build_client_venv("v1-client-venv", [V1_REQUIREMENT])


@pytest.fixture(scope="session")
def v1_client_python() -> Path:
    """A python with the v1 MCP SDK (see :func:`build_v1_client_venv`)."""
    try:
        return build_v1_client_venv()
    except ClientVenvError as exc:
        pytest.fail(str(exc), pytrace=False)


def test_v1_client_session(v1_client_python: Path, database: Path, tmp_path: Path) -> None:
    script = tmp_path / "v1_client.py"
    script.write_text(CLIENT_SCRIPT, encoding="utf-8")
    server_stderr = tmp_path / "server.stderr"
    run = subprocess.run(
        [str(v1_client_python), str(script), server_command(), str(database), str(server_stderr)],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
        env=server_env(tmp_path / "home", os.environ),
        check=False,
    )
    assert run.returncode == 0, f"the v1 client failed:\n{run.stderr[-5000:]}"
    summary: dict[str, Any] = json.loads(run.stdout)
    print(f"\nv1 client: mcp {summary['mcp_version']}, protocol {summary['protocol_version']}")

    assert summary["mcp_version"].startswith("1."), summary["mcp_version"]
    assert summary["protocol_version"] == HANDSHAKE_PROTOCOL_VERSION
    assert summary["server_name"] == "groundhog-mcp"
    assert summary["resources_list_changed_capability"] is True
    assert set(summary["tools"]) == TOOL_NAMES
    assert summary["transport_errors"] == []

    # The v1 session validates structuredContent against each tool's outputSchema as it goes.
    assert summary["register"]["is_error"] is False
    assert summary["register"]["out"]["revision"] == 1
    assert summary["register"]["out"]["created"] is True
    assert summary["list_changed_after_register"] is True

    assert summary["update"]["is_error"] is False
    assert summary["update"]["out"]["revision"] == 2
    assert summary["read"]["is_error"] is False
    assert summary["read"]["out"]["revision"] == 2
    assert summary["read"]["out"]["state"]["data"] == {"step": 1}

    conflict = summary["conflict"]
    assert conflict["is_error"] is True
    assert "conflict" in conflict["text"]
    assert "revision 2" in conflict["text"]
    assert "Traceback" not in conflict["text"]

    assert summary["merge"]["is_error"] is False
    assert summary["merge"]["out"]["revision"] == 3
    assert summary["unregister"]["is_error"] is False
    assert summary["list_changed_after_unregister"] is True
    assert summary["gone"]["is_error"] is True
    assert "v1-agent" in summary["gone"]["text"]

    assert json_log_lines(server_stderr.read_text(encoding="utf-8")), "no structured log line on stderr"


if __name__ == "__main__":
    print(build_v1_client_venv())
