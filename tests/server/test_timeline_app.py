"""get_history as an MCP App: the tool is bound to ui://groundhog/timeline.html, a document served
as text/html;profile=mcp-app whose CSP admits only its own script and style, by hash."""

from __future__ import annotations

import base64
import hashlib
import re

import mcp_types as types
from mcp import Client
from mcp.server.apps import APP_MIME_TYPE

from tests.server.conftest import call


def sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


async def test_get_history_is_bound_to_the_timeline_app(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert tools["get_history"].meta == {"ui": {"resourceUri": "ui://groundhog/timeline.html"}}
    assert all(t.meta is None or "ui" not in t.meta for name, t in tools.items() if name != "get_history")
    read = await client.read_resource("ui://groundhog/timeline.html")
    document = read.contents[0]
    assert isinstance(document, types.TextResourceContents) and document.mime_type == APP_MIME_TYPE
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', document.text)
    script = re.search(r"<script>(.*)</script>", document.text, re.S)
    style = re.search(r"<style>(.*)</style>", document.text, re.S)
    assert csp and script and style
    assert f"script-src {sha256(script.group(1))};" in csp.group(1)
    assert f"style-src {sha256(style.group(1))};" in csp.group(1)
    assert "unsafe" not in csp.group(1) and "http" not in csp.group(1)
    assert ".innerHTML" not in script.group(1)  # values reach the page as text only


async def test_a_client_without_apps_gets_the_same_history(client: Client) -> None:
    await call(client, "register_context", name="plan", state={"data": {"step": 1}})
    await call(client, "update_state", name="plan", data={"step": 2})
    history = await call(client, "get_history", name="plan")
    assert [(r["revision"], r["op"]) for r in history["revisions"]] == [(2, "update"), (1, "register")]

