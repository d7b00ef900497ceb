"""The dashboard in a real browser (Playwright on Debian's chromium): list → context → timeline
→ diff → audit with the content asserted, a change made through MCP by another process showing
up without reload, a read-only token's view, and state content that never runs as script.

Screenshots of each page are written to ``GROUNDHOG_SCREENSHOT_DIR`` (default: the test's
temporary directory); ``GROUNDHOG_UPDATE_DOCS_IMAGES=1`` also refreshes docs/images/.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp_types import TextResourceContents
from playwright.sync_api import Browser, Page, Route, expect

from groundhog_mcp import StateManager
from groundhog_mcp.app import Settings, audit_key, create_server
from groundhog_mcp.models import ContextState, Grant, Principal
from groundhog_mcp.server.timeline_app import TIMELINE_APP_URI
from groundhog_mcp.store import open_store
from tests.dashboard.test_command import start_dashboard
from tests.e2e.harness import mcp_client, server_env
from tests.server.test_http import Launcher, ServerProcess

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
INJECTED = "<script>document.title='owned'</script><img src=x onerror=\"document.title='owned'\">"
ALICE = Principal(name="alice", namespace="team")

if not Path(CHROMIUM).exists():
    pytest.skip(
        f"the browser tests need Debian's chromium at {CHROMIUM} (.ci/run installs it)", allow_module_level=True
    )


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Debian's chromium, never a downloaded browser build."""
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "headless": True,
        "args": [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    }


def in_thread(work: Callable[[], Awaitable[Any]]) -> Any:
    """Run async ``work`` on a thread of its own (Playwright's sync API owns this one)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = anyio.run(work)
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class Site:
    def __init__(self, launcher: Launcher, dashboard: ServerProcess, admin: str, reader: str, shots: Path) -> None:
        self.launcher = launcher
        self.dashboard = dashboard
        self.admin = admin
        self.reader = reader
        self.shots = shots

    def sign_in(self, page: Page, token: str) -> None:
        page.goto(self.dashboard.base + "/")
        expect(page).to_have_url(self.dashboard.base + "/login")
        page.fill("input[name=token]", token)
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_have_text("Contexts")

    def shot(self, page: Page, name: str) -> None:
        path = self.shots / f"dashboard-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if os.environ.get("GROUNDHOG_UPDATE_DOCS_IMAGES") == "1":
            shutil.copyfile(path, DOCS_IMAGES / path.name)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Generator[Site]:
    root = tmp_path_factory.mktemp("dashboard-browser")
    launcher = Launcher(root)
    _, admin = launcher.tokens.create("alice", "team")
    _, reader = launcher.tokens.create("rita", "team", (Grant.parse("read:notes."),))

    async def seed() -> None:
        # Audited with the key file beside the database, which the dashboard verifies with.
        signer = audit_key(Settings(database=str(launcher.database)))
        manager = StateManager(open_store(str(launcher.database), audit_signer=signer))
        await manager.start()
        try:
            team = manager.with_principal(ALICE)
            await team.register(
                "notes.plan",
                state=ContextState(data={"steps": ["draft"], "owner": "alice", "note": INJECTED}),
                metadata={"purpose": "release plan"},
            )
            await team.update("notes.plan", merge_patch_={"steps": ["draft", "review"]})
            await team.update("notes.plan", merge_patch_={"owner": "bob"})
            await team.register("secrets.keys", state=ContextState(data={"k": "hidden-value"}))
            await team.register("notes.live", state=ContextState(data={"steps": ["draft", "review"]}))
        finally:
            await manager.close()

    in_thread(seed)
    shots = Path(os.environ.get("GROUNDHOG_SCREENSHOT_DIR") or root / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    try:
        yield Site(launcher, start_dashboard(launcher), admin, reader, shots)
    finally:
        launcher.close()


def test_list_context_timeline_diff_audit(site: Site, page: Page) -> None:
    site.sign_in(page, site.admin)
    # The tests share the site (one dashboard per module): only the live test writes, to notes.live.
    rows = page.locator("#contexts tbody tr")
    expect(rows).to_have_count(3)
    plan = page.locator("#contexts tbody tr", has_text="notes.plan")
    expect(plan.locator("td").nth(1)).to_have_text("3")
    expect(plan.locator("td").nth(4)).to_have_text("alice")
    site.shot(page, "contexts")

    page.click("#contexts >> text=notes.plan")
    expect(page.locator("h1")).to_have_text("notes.plan")
    expect(page.locator("#facts")).to_contain_text("revision3")
    page.click("summary:has-text('steps')")  # loaded on demand, by JSON Pointer
    expect(page.locator("#state")).to_contain_text('"review"')
    site.shot(page, "context")

    page.click("text=timeline")
    timeline = page.locator("#timeline tbody tr")
    expect(timeline).to_have_count(3)
    expect(timeline.nth(2)).to_contain_text("register")
    site.shot(page, "timeline")

    page.check("#timeline tbody tr:nth-child(3) input[name=from]")
    page.click("text=Compare the two revisions")
    expect(page.locator("h1")).to_have_text("notes.plan: revision 1 → 3")
    expect(page.locator("#diff")).to_contain_text("/data/owner")
    expect(page.locator("#diff tr.op-replace")).to_contain_text('"bob"')
    expect(page.locator("#patch")).to_contain_text('"op": "add"')
    site.shot(page, "diff")

    page.click("nav >> text=Audit")
    expect(page.locator("#verify")).to_have_text(re.compile(r"^Audit log intact: [5-9] row\(s\) verified\.$"))
    expect(page.locator("#audit tbody tr", has_text="notes.plan")).to_have_count(3)
    site.shot(page, "audit")

    page.click("nav >> text=Metrics")
    expect(page.locator("#charts svg")).to_have_count(4)
    site.shot(page, "metrics")


def test_a_change_through_mcp_by_another_process_appears_without_reload(site: Site, page: Page) -> None:
    site.sign_in(page, site.admin)
    expect(page.locator("#live")).to_have_text("live updates: on")
    revision = page.locator("#contexts tbody tr", has_text="notes.live").locator("td").nth(1)
    before = int(revision.inner_text())
    # A second tab on the context, with a node of its state tree open.
    tab = page.context.new_page()
    tab.goto(site.dashboard.base + "/c/notes.live")
    tab.click("summary:has-text('steps')")
    expect(tab.locator("#state")).to_contain_text('"review"')
    expect(tab.locator("#live")).to_have_text("live updates: on")

    async def write_through_mcp() -> None:
        env = {**server_env(site.launcher.tmp_path / "home", os.environ), "GROUNDHOG_NAMESPACE": "team"}
        async with mcp_client(
            site.launcher.database, mode="legacy", stderr_path=site.launcher.tmp_path / "stdio.log", env=env
        ) as client:
            update = {"name": "notes.live", "merge_patch": {"steps": ["draft", "review", "ship"]}}
            result = await client.call_tool("update_state", update)
            assert not result.is_error, result.content

    for opened in (page, tab):
        opened.evaluate("window.__sameDocument = true")  # gone if the page reloads
    in_thread(write_through_mcp)
    expect(revision).to_have_text(str(before + 1), timeout=2000)
    expect(tab.locator("#state")).to_contain_text('"ship"', timeout=2000)  # the open node, refreshed
    expect(tab.locator("#facts")).to_contain_text(f"revision{before + 1}")
    expect(page.locator("#live")).to_contain_text("notes.live revision")
    assert page.evaluate("window.__sameDocument") is True and tab.evaluate("window.__sameDocument") is True
    tab.close()


def test_a_read_only_token_sees_only_its_prefix(site: Site, browser: Browser) -> None:
    context = browser.new_context()
    page = context.new_page()
    site.sign_in(page, site.reader)
    names = page.locator("#contexts tbody tr td:first-child").all_inner_texts()
    assert names == ["notes.live", "notes.plan"]
    page.goto(site.dashboard.base + "/c/secrets.keys")
    expect(page.locator("main")).to_contain_text("no context named 'secrets.keys'")
    expect(page.locator("main")).not_to_contain_text("hidden-value")
    page.goto(site.dashboard.base + "/audit")
    expect(page.locator("main")).to_contain_text("needs the admin grant")
    site.shot(page, "read-only")
    context.close()


def test_state_content_never_runs_as_script_and_the_csp_blocks_inline_script(site: Site, page: Page) -> None:
    site.sign_in(page, site.admin)
    page.goto(site.dashboard.base + "/c/notes.plan")
    note = page.locator("#state li", has_text="note")
    expect(note).to_contain_text("<script>document.title='owned'</script>")  # shown as text
    assert page.title() != "owned"

    # Were escaping ever to fail, the Content-Security-Policy still refuses inline script: put one
    # into the served page itself (the response's headers unchanged) and see that it does not run.
    def inject(route: Route) -> None:
        response = route.fetch()
        body = response.text().replace("</main>", "<script>document.title='owned'</script></main>")
        route.fulfill(response=response, body=body)

    page.route(site.dashboard.base + "/c/notes.plan", inject)
    messages: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    page.goto(site.dashboard.base + "/c/notes.plan")
    expect(page.locator("h1")).to_have_text("notes.plan")
    assert page.title() != "owned"
    assert any("Content Security Policy" in text for text in messages), messages


_HOST_PAGE = """<!doctype html><html><body><iframe id="app" sandbox="allow-scripts" width="800" height="500"></iframe>
<script>
window.calls = [];
window.start = function (history, diff, document_) {
  const frame = document.getElementById("app");
  window.addEventListener("message", function (event) {
    const message = event.data, reply = function (m) { frame.contentWindow.postMessage(m, "*"); };
    if (message.method === "ui/initialize") {
      reply({jsonrpc: "2.0", id: message.id, result: {protocolVersion: "2026-01-26",
             hostInfo: {name: "test-host", version: "1"}, hostCapabilities: {}}});
    } else if (message.method === "ui/notifications/initialized") {
      reply({jsonrpc: "2.0", method: "ui/notifications/tool-result", params: history});
    } else if (message.method === "tools/call") {
      window.calls.push(message.params);
      reply({jsonrpc: "2.0", id: message.id, result: diff});
    }
  });
  frame.srcdoc = document_;
};
</script></body></html>"""


def test_the_timeline_app_shows_history_and_a_diff_as_text(page: Page, tmp_path: Path) -> None:
    async def results() -> tuple[dict[str, Any], dict[str, Any], str]:
        server = create_server(Settings(database=str(tmp_path / "app.sqlite"), tools="all"))
        async with Client(server) as client:
            await client.call_tool("register_context", {"name": "plan", "state": {"data": {"note": "a"}}})
            await client.call_tool("update_state", {"name": "plan", "data": {"note": INJECTED}})
            history = await client.call_tool("get_history", {"name": "plan"})
            diff = await client.call_tool("diff_states", {"name": "plan", "from_revision": 1, "to_revision": 2})
            document = (await client.read_resource(TIMELINE_APP_URI)).contents[0]
            assert isinstance(document, TextResourceContents)
            dump: dict[str, Any] = {"by_alias": True, "mode": "json", "exclude_none": True}
            return history.model_dump(**dump), diff.model_dump(**dump), document.text

    history, diff, document = in_thread(results)
    page.set_content(_HOST_PAGE)
    page.evaluate("([h, d, doc]) => window.start(h, d, doc)", [history, diff, document])
    app = page.frame_locator("#app")
    expect(app.locator("#title")).to_have_text("plan — revision 2")
    expect(app.locator("#timeline tr")).to_have_count(3)  # a header and two revisions
    app.locator("#compare").click()
    expect(app.locator("#diff")).to_contain_text("Revision 1 → 2")
    expect(app.locator("#diff")).to_contain_text("<script>document.title='owned'</script>")  # as text
    assert page.evaluate("window.calls") == [
        {"name": "diff_states", "arguments": {"name": "plan", "from_revision": 1, "to_revision": 2}}
    ]
    assert all(frame.title() != "owned" for frame in page.frames)
