"""``groundhog-mcp dashboard`` and ``/ui`` on the HTTP transport, as real processes: pages,
sign-in, Host/Origin checks, and live updates of changes made by another process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import AsyncGenerator
from pathlib import Path

import anyio
import httpx2
import pytest

from groundhog_mcp import StateManager
from groundhog_mcp.models import ContextState, Grant, Principal
from tests.e2e.harness import server_command
from tests.server.test_http import Launcher, ServerProcess, launcher

pytestmark = pytest.mark.e2e
__all__ = ["launcher"]  # the fixture

START_TIMEOUT_S = 30.0


def start_dashboard(launcher: Launcher, *args: str) -> ServerProcess:
    command = [
        server_command(),
        "dashboard",
        "--port",
        "0",
        "--database",
        str(launcher.database),
        "--token-file",
        str(launcher.token_file),
        *args,
    ]
    streams = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    proc = subprocess.Popen(command, text=True, env=launcher.env(), **streams)
    server = ServerProcess(proc)
    launcher.started.append(server)
    threading.Thread(target=server.follow_stderr, daemon=True).start()
    assert server.wait_until(lambda: server.serving is not None, START_TIMEOUT_S), server.stderr()
    return server


async def next_change(lines: AsyncGenerator[str]) -> dict[str, object]:
    event = ""
    async for line in lines:
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: ") and event == "change":
            return json.loads(line[len("data: ") :])
    raise AssertionError("the stream ended without a change")


async def test_the_command_serves_pages_and_live_changes_of_another_process(launcher: Launcher) -> None:
    async with StateManager.open(launcher.database) as writer:  # this test process: another process
        await writer.register("tasks", state=ContextState(data={"open": 1}))
        dashboard = start_dashboard(launcher)
        assert dashboard.serving is not None and dashboard.serving["app"] == "dashboard"
        async with httpx2.AsyncClient(base_url=dashboard.base, timeout=10) as browser:
            listing = await browser.get("/")
            assert listing.status_code == 200 and '<a href="/c/tasks">tasks</a>' in listing.text
            assert "script-src 'self'" in listing.headers["content-security-policy"]
            assert (await browser.get("/", headers={"host": "evil.example"})).status_code == 421
            assert (await browser.get("/", headers={"origin": "http://evil.example"})).status_code == 403

            async with browser.stream("GET", "/live?after=0&context=tasks") as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                lines = stream.aiter_lines()
                await writer.update("tasks", data={"open": 2})
                with anyio.fail_after(5):
                    change = await next_change(lines)
                assert (change["context"], change["revision"], change["op"]) == ("tasks", 2, "update")

                # A stream per tab, up to four per browser; the fifth is refused, not queued.
                async with (
                    browser.stream("GET", "/live") as second,
                    browser.stream("GET", "/live") as third,
                    browser.stream("GET", "/live") as fourth,
                ):
                    assert second.status_code == third.status_code == fourth.status_code == 200
                    fifth = await browser.get("/live")
                    assert fifth.status_code == 429 and "at most 4 live streams per session" in fifth.text
    assert await dashboard.stop() == 0


async def test_with_a_token_file_the_command_needs_sign_in_and_shows_the_tokens_namespace(launcher: Launcher) -> None:
    _, reader = launcher.tokens.create("rita", "team", (Grant.parse("read:notes."),))
    async with StateManager.open(launcher.database) as writer:
        team = writer.with_principal(Principal(name="alice", namespace="team"))
        await team.register("notes.a")
        await team.register("private.b")
        await writer.register("notes.default")
    dashboard = start_dashboard(launcher)
    async with httpx2.AsyncClient(base_url=dashboard.base, timeout=10) as browser:
        assert (await browser.get("/")).headers["location"] == "/login"
        assert (await browser.get("/live")).status_code == 401
        assert (await browser.post("/login", data={"token": reader})).status_code == 303
        listing = await browser.get("/")
        assert "notes.a" in listing.text and "private.b" not in listing.text and "notes.default" not in listing.text
        assert "rita @ team" in listing.text
    assert await dashboard.stop() == 0


async def test_ui_on_the_http_transport_signs_in_with_the_servers_tokens(launcher: Launcher, tmp_path: Path) -> None:
    _, token = launcher.tokens.create("alice", "team")
    async with StateManager.open(launcher.database) as writer:
        await writer.with_principal(Principal(name="alice", namespace="team")).register("plan")
        await writer.register("elsewhere")
    server = launcher.start("http")
    async with httpx2.AsyncClient(base_url=server.base, timeout=10) as browser:
        assert (await browser.get("/ui")).headers["location"] == "/ui/"
        assert (await browser.get("/ui/")).headers["location"] == "/ui/login"
        assert (await browser.post("/ui/login", data={"token": "gh_wrong"})).status_code == 401
        signed_in = await browser.post("/ui/login", data={"token": token}, headers={"origin": server.base})
        assert signed_in.status_code == 303 and "Path=/ui/" in signed_in.headers["set-cookie"]
        listing = await browser.get("/ui/")
        assert '<a href="/ui/c/plan">plan</a>' in listing.text and "elsewhere" not in listing.text
        assert "script-src 'self'" in listing.headers["content-security-policy"]
        assert (await browser.get("/ui/static/dashboard.js")).status_code == 200
        assert (await browser.get("/ui/", headers={"origin": "http://evil.example"})).status_code == 403
        assert (await browser.get("/ui/", headers={"host": "evil.example"})).status_code == 421
        assert (await browser.post("/ui/c/plan", data={"x": "1"})).status_code == 405
        assert (await browser.get("/mcp")).status_code != 404  # the MCP endpoint is still there
    assert await server.stop() == 0


def test_the_dashboard_never_imports_the_mcp_sdk() -> None:
    probe = (
        "import sys\n"
        "import groundhog_mcp.cli, groundhog_mcp.dashboard, groundhog_mcp.dashboard.serve\n"
        "from groundhog_mcp.app import serve_dashboard\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'mcp_types')))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
