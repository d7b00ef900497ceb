"""An agent framework's MCP client against our server: LangChain's ``langchain-mcp-adapters``.

The adapters pin ``mcp<2``, so they run in a venv of their own (tests/e2e/client_venv.py, cached
under ``.ci/cache/langchain-client-venv/``). A client script there starts our server over stdio
through ``MultiServerMCPClient``, loads the tools with ``get_tools`` and drives the agent workflow
through the LangChain tool objects' ``ainvoke``, as an agent would (no model needed). The
adapters are stateless by default: every tool call starts a server process of its own, so the
state read back has also been through the database file.
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
from tests.e2e.harness import server_command, server_env

pytestmark = pytest.mark.e2e

LANGCHAIN_REQUIREMENTS = ("langchain-mcp-adapters==0.3.2", "langchain-core>=1.3.3,<2", "mcp>=1.24,<2")
CLIENT_TIMEOUT_S = 180
# The default profile as an agent sees it (groundhog_mcp/profiles.py), spelled out so that a
# change there shows up here too.
DEFAULT_TOOLS = [
    "diff_states",
    "find_contexts",
    "get_history",
    "get_state",
    "lease",
    "list_contexts",
    "register_context",
    "rollback_state",
    "update_state",
    "wait_for_change",
]

CLIENT_SCRIPT = textwrap.dedent(
    '''
    """langchain-mcp-adapters against groundhog-mcp; prints a JSON summary on stdout."""
    import asyncio
    import json
    import os
    import sys
    from importlib.metadata import version

    from langchain_mcp_adapters.client import MultiServerMCPClient


    async def main(command, database, tools_setting):
        # As a user's config would: the settings in the server's env (the client adds PATH, HOME).
        env = {k: v for k, v in os.environ.items() if k.startswith("XDG_")}
        env.update(GROUNDHOG_DATABASE=database, GROUNDHOG_TOOLS=tools_setting)
        client = MultiServerMCPClient(
            {"groundhog": {"transport": "stdio", "command": command, "args": [], "env": env}}
        )
        tools = {tool.name: tool for tool in await client.get_tools()}
        summary = {
            "versions": {name: version(name) for name in ("langchain-mcp-adapters", "langchain-core", "mcp")},
            "tools": sorted(tools),
            "calls": {},
        }

        async def call(label, name, args):
            if name not in tools:
                summary["calls"][label] = None
                return
            # A tool call as an agent makes it: the answer is a ToolMessage whose artifact holds
            # the structured result.
            message = await tools[name].ainvoke({"name": name, "args": args, "id": label, "type": "tool_call"})
            artifact = message.artifact or {}
            summary["calls"][label] = {
                "status": message.status,
                "structured": artifact.get("structured_content"),
                "text": message.content if isinstance(message.content, str) else
                "\\n".join(block.get("text", "") for block in message.content if isinstance(block, dict)),
            }

        await call("register", "register_context", {"name": "lc-agent", "state": {"data": {"step": 0}}})
        await call("update", "update_state", {"name": "lc-agent", "data": {"step": 1}, "expected_revision": 1})
        await call("stale", "update_state", {"name": "lc-agent", "data": {"step": 99}, "expected_revision": 1})
        await call("read", "get_state", {"name": "lc-agent"})
        print(json.dumps(summary))


    asyncio.run(main(*sys.argv[1:4]))
    '''
)


def build_langchain_client_venv() -> Path:
    """The python of the langchain-mcp-adapters venv. ``.ci/run`` builds it while it lints
    (``python -m tests.e2e.test_framework_clients``)."""
    return build_client_venv("langchain-client-venv", LANGCHAIN_REQUIREMENTS)


@pytest.fixture(scope="session")
def langchain_python() -> Path:
    try:
        return build_langchain_client_venv()
    except ClientVenvError as exc:
        pytest.fail(str(exc), pytrace=False)


def run_langchain_client(python: Path, tmp_path: Path, tools_setting: str) -> dict[str, Any]:
    """Runs the client script against a fresh database; its summary."""
    script = tmp_path / "langchain_client.py"
    script.write_text(CLIENT_SCRIPT, encoding="utf-8")
    database = tmp_path / "groundhog.sqlite"
    run = subprocess.run(
        [str(python), str(script), server_command(), str(database), tools_setting],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
        env=server_env(tmp_path / "home", os.environ),
        check=False,
    )
    assert run.returncode == 0, f"the LangChain client failed:\n{run.stderr[-5000:]}"
    return json.loads(run.stdout)


def check_agent_workflow(summary: dict[str, Any]) -> None:
    """What an agent built on the adapters needs: the default tools, CAS writes, the state back."""
    assert summary["tools"] == DEFAULT_TOOLS
    calls = summary["calls"]

    assert calls["register"]["status"] == "success"
    assert calls["register"]["structured"]["revision"] == 1
    assert calls["register"]["structured"]["created"] is True

    assert calls["update"]["status"] == "success"
    assert calls["update"]["structured"]["revision"] == 2

    # A stale expected_revision comes back to the model as an error message it can act on.
    stale = calls["stale"]
    assert stale["status"] == "error"
    assert "conflict" in stale["text"]
    assert "revision 2" in stale["text"]
    assert "Traceback" not in stale["text"]

    read = calls["read"]
    assert read["status"] == "success"
    assert read["structured"]["revision"] == 2
    assert read["structured"]["state"]["data"] == {"step": 1}


def test_langchain_adapters_drive_the_agent_workflow(langchain_python: Path, tmp_path: Path) -> None:
    summary = run_langchain_client(langchain_python, tmp_path, "default")
    print(f"\nLangChain client: {summary['versions']}")
    assert summary["versions"]["langchain-mcp-adapters"] == "0.3.2"
    assert summary["versions"]["mcp"].startswith("1.")
    check_agent_workflow(summary)


def test_langchain_check_fails_on_a_server_without_update_state(langchain_python: Path, tmp_path: Path) -> None:
    """The check above is not vacuous: a server whose tools lack update_state fails it."""
    summary = run_langchain_client(langchain_python, tmp_path, "register_context,list_contexts,get_state")
    assert summary["tools"] == ["get_state", "list_contexts", "register_context"]
    assert summary["calls"]["update"] is None
    with pytest.raises(AssertionError):
        check_agent_workflow(summary)


if __name__ == "__main__":
    print(build_langchain_client_venv())
