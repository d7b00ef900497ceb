"""The dashboard in a real browser (Playwright on Debian's chromium): list → context → timeline
→ diff → audit with the content asserted, a change made through MCP by another process showing
up without reload, a read-only token's view, and state content that never runs as script.

Playwright's async API, not pytest-playwright's sync fixtures: those keep an event loop marked
running in the worker's main thread for the rest of the session, which breaks every later test
that starts one. Screenshots of each page are written to ``GROUNDHOG_SCREENSHOT_DIR`` (default:
the module's temporary directory); ``GROUNDHOG_UPDATE_DOCS_IMAGES=1`` also refreshes docs/images/.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp_types import TextResourceContents
from playwright.async_api import Browser, Page, Route, async_playwright, expect

from groundhog_mcp import StateManager
from groundhog_mcp.app import Settings, audit_key, create_server
from groundhog_mcp.models import ContextState, Grant, Principal, parse_timestamp
from groundhog_mcp.server.timeline_app import TIMELINE_APP_URI
from groundhog_mcp.store import open_store
from tests.dashboard.test_command import start_dashboard
from tests.e2e.harness import mcp_client, server_env
from tests.server.test_http import Launcher, ServerProcess

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
INJECTED = "<script>document.title='owned'</script><img src=x onerror=\"document.title='owned'\">"
ALICE = Principal(name="alice", namespace="team")

if not Path(CHROMIUM).exists():
    pytest.skip(
        f"the browser tests need Debian's chromium at {CHROMIUM} (.ci/run installs it)", allow_module_level=True
    )


@pytest.fixture(scope="module")
async def browser() -> AsyncGenerator[Browser]:
    """One browser for the module: Debian's chromium, never a downloaded browser build."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncGenerator[Page]:
    context = await browser.new_context()
    try:
        yield await context.new_page()
    finally:
        await context.close()


class Site:
    def __init__(self, launcher: Launcher, dashboard: ServerProcess, admin: str, reader: str, shots: Path) -> None:
        self.launcher = launcher
        self.dashboard = dashboard
        self.admin = admin
        self.reader = reader
        self.shots = shots

    async def sign_in(self, page: Page, token: str) -> None:
        await page.goto(self.dashboard.base + "/")
        await expect(page).to_have_url(self.dashboard.base + "/login")
        await page.fill("input[name=token]", token)
        await page.click("button[type=submit]")
        await expect(page.locator("h1")).to_have_text("Contexts")

    async def shot(self, page: Page, name: str) -> None:
        path = self.shots / f"dashboard-{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        if os.environ.get("GROUNDHOG_UPDATE_DOCS_IMAGES") == "1":
            shutil.copyfile(path, DOCS_IMAGES / path.name)


@pytest.fixture(scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncGenerator[Site]:
    root = tmp_path_factory.mktemp("dashboard-browser")
    launcher = Launcher(root)
    _, admin = launcher.tokens.create("alice", "team")
    _, reader = launcher.tokens.create("rita", "team", (Grant.parse("read:notes."),))
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
        await team.fork("secrets.keys", "notes.fork")  # its source is outside the reader's grants
        await team.register("notes.draft", state=ContextState(data={"v": 1}), settings={"ttl_seconds": 86400})
    finally:
        await manager.close()
    shots = Path(os.environ.get("GROUNDHOG_SCREENSHOT_DIR") or root / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    try:
        yield Site(launcher, start_dashboard(launcher), admin, reader, shots)
    finally:
        launcher.close()


async def test_list_context_timeline_diff_audit(site: Site, page: Page) -> None:
    await site.sign_in(page, site.admin)
    # The tests share the site (one dashboard per module): only the live test writes, to notes.live.
    await expect(page.locator("#contexts tbody tr")).to_have_count(5)
    plan = page.locator("#contexts tbody tr", has_text="notes.plan")
    await expect(plan.locator("td").nth(1)).to_have_text("3")
    await expect(plan.locator("td").nth(4)).to_have_text("alice")
    draft = page.locator("#contexts tbody tr", has_text="notes.draft")
    await expect(draft.locator("td.expires")).to_have_text(re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z$"))
    await site.shot(page, "contexts")

    await page.click("#contexts >> text=notes.plan")
    await expect(page.locator("h1")).to_have_text("notes.plan")
    await expect(page.locator("#facts")).to_contain_text("revision3")
    await expect(page.locator("#facts")).to_contain_text("leasefree")
    await expect(page.locator("#facts")).to_contain_text("expiresnever")
    await page.click("summary:has-text('steps')")  # loaded on demand, by JSON Pointer
    await expect(page.locator("#state")).to_contain_text('"review"')
    await site.shot(page, "context")

    await page.click("text=timeline")
    timeline = page.locator("#timeline tbody tr")
    await expect(timeline).to_have_count(3)
    await expect(timeline.nth(2)).to_contain_text("register")
    await site.shot(page, "timeline")

    await page.check("#timeline tbody tr:nth-child(3) input[name=from]")
    await page.click("text=Compare the two revisions")
    await expect(page.locator("h1")).to_have_text("notes.plan: revision 1 → 3")
    await expect(page.locator("#diff")).to_contain_text("/data/owner")
    await expect(page.locator("#diff tr.op-replace")).to_contain_text('"bob"')
    await expect(page.locator("#patch")).to_contain_text('"op": "add"')
    await site.shot(page, "diff")

    await page.click("nav >> text=Audit")
    await expect(page.locator("#verify")).to_have_text(re.compile(r"^Audit log intact: [5-9] row\(s\) verified\.$"))
    await expect(page.locator("#audit tbody tr", has_text="notes.plan")).to_have_count(3)
    await site.shot(page, "audit")

    await page.click("nav >> text=Metrics")
    await expect(page.locator("#charts svg")).to_have_count(4)
    await site.shot(page, "metrics")


async def test_a_change_through_mcp_by_another_process_appears_without_reload(site: Site, page: Page) -> None:
    await site.sign_in(page, site.admin)
    await expect(page.locator("#live")).to_have_text("live updates: on")
    revision = page.locator("#contexts tbody tr", has_text="notes.live").locator("td").nth(1)
    before = int(await revision.inner_text())
    # A second tab on the context, with a node of its state tree open.
    tab = await page.context.new_page()
    await tab.goto(site.dashboard.base + "/c/notes.live")
    await tab.click("summary:has-text('steps')")
    await expect(tab.locator("#state")).to_contain_text('"review"')
    await expect(tab.locator("#live")).to_have_text("live updates: on")
    for opened in (page, tab):
        await opened.evaluate("window.__sameDocument = true")  # gone if the page reloads

    env = {**server_env(site.launcher.tmp_path / "home", os.environ), "GROUNDHOG_NAMESPACE": "team"}
    async with mcp_client(
        site.launcher.database, mode="legacy", stderr_path=site.launcher.tmp_path / "stdio.log", env=env
    ) as client:  # the stdio server: another process, writing through MCP
        update = {"name": "notes.live", "merge_patch": {"steps": ["draft", "review", "ship"]}}
        result = await client.call_tool("update_state", update)
        assert not result.is_error, result.content

    await expect(revision).to_have_text(str(before + 1), timeout=2000)
    await expect(tab.locator("#state")).to_contain_text('"ship"', timeout=2000)  # the open node, refreshed
    await expect(tab.locator("#facts")).to_contain_text(f"revision{before + 1}")
    await expect(page.locator("#live")).to_contain_text("notes.live revision")
    assert await page.evaluate("window.__sameDocument") is True
    assert await tab.evaluate("window.__sameDocument") is True


async def test_lineage_and_a_lease_taken_through_mcp_by_another_process(site: Site, page: Page) -> None:
    await site.sign_in(page, site.admin)
    await expect(page.locator("#live")).to_have_text("live updates: on")
    lease = page.locator("#contexts tbody tr", has_text="notes.fork").locator("td.lease")
    await expect(lease).to_have_text("")
    tab = await page.context.new_page()
    await tab.goto(site.dashboard.base + "/c/notes.fork")
    facts = tab.locator("#facts")
    await expect(facts.locator("dt:has-text('forked from') + dd")).to_have_text("secrets.keys@1")
    await expect(facts.locator("dt:has-text('forked from') + dd a")).to_have_attribute(
        "href", "/c/secrets.keys?revision=1"
    )
    await expect(facts.locator("dt:has-text('lease') + dd")).to_have_text("free")
    await expect(tab.locator("#live")).to_have_text("live updates: on")
    for opened in (page, tab):
        await opened.evaluate("window.__sameDocument = true")  # gone if the page reloads

    held = re.compile(r"^local/reviewer until \d{4}-\d\d-\d\dT[\d:.]+Z$")
    env = {**server_env(site.launcher.tmp_path / "home", os.environ), "GROUNDHOG_NAMESPACE": "team"}
    async with mcp_client(
        site.launcher.database, mode="legacy", stderr_path=site.launcher.tmp_path / "lease.log", env=env
    ) as client:  # the stdio server: another process, taking the lease through MCP
        taken = await client.call_tool("lease", {"name": "notes.fork", "action": "take", "holder": "reviewer"})
        assert not taken.is_error and taken.structured_content is not None, taken.content
        await expect(lease).to_have_text(held, timeout=2000)
        await expect(facts.locator("dt:has-text('lease') + dd")).to_have_text(
            re.compile(r"^held by local/reviewer until "), timeout=2000
        )
        await expect(page.locator("#live")).to_contain_text("(lease_take by local)")
        await site.shot(tab, "lineage")
        token = taken.structured_content["token"]
        released = await client.call_tool("lease", {"name": "notes.fork", "action": "release", "token": token})
        assert not released.is_error, released.content
    await expect(lease).to_have_text("", timeout=2000)
    await expect(facts.locator("dt:has-text('lease') + dd")).to_have_text("free", timeout=2000)
    assert await page.evaluate("window.__sameDocument") is True
    assert await tab.evaluate("window.__sameDocument") is True
    await facts.locator("dt:has-text('forked from') + dd a").click()  # the source, at the fork point
    await expect(tab.locator("h1")).to_have_text("secrets.keys")
    await expect(tab.locator("#state")).to_contain_text("hidden-value")


async def test_a_lease_that_runs_out_shows_as_free_at_expiry_without_reload(site: Site, page: Page) -> None:
    """Expiry puts nothing in the change feed: the page refreshes itself at the earliest expiry it shows."""
    await site.sign_in(page, site.admin)
    await expect(page.locator("#live")).to_have_text("live updates: on")
    lease = page.locator("#contexts tbody tr", has_text="notes.draft").locator("td.lease")
    await expect(lease).to_have_text("")
    tab = await page.context.new_page()
    await tab.goto(site.dashboard.base + "/c/notes.draft")
    fact = tab.locator("#facts dt:has-text('lease') + dd")
    await expect(fact).to_have_text("free")
    await expect(tab.locator("#live")).to_have_text("live updates: on")
    for opened in (page, tab):
        await opened.evaluate("window.__sameDocument = true")  # gone if the page reloads

    env = {**server_env(site.launcher.tmp_path / "home", os.environ), "GROUNDHOG_NAMESPACE": "team"}
    async with mcp_client(
        site.launcher.database, mode="legacy", stderr_path=site.launcher.tmp_path / "expiry.log", env=env
    ) as client:  # the stdio server: another process, taking a 2 s lease through MCP and never releasing it
        taken = await client.call_tool(
            "lease", {"name": "notes.draft", "action": "take", "holder": "sprinter", "ttl_seconds": 2}
        )
        assert not taken.is_error and taken.structured_content is not None, taken.content
    await expect(lease).to_have_text(re.compile(r"^local/sprinter until "), timeout=2000)
    await expect(fact).to_have_text(re.compile(r"^held by local/sprinter until "), timeout=2000)
    expires = parse_timestamp(str(taken.structured_content["expires_at"]))
    await expect(lease).to_have_text("", timeout=4000)  # no change in the feed: the page's own timer
    await expect(fact).to_have_text("free", timeout=2000)
    assert datetime.now(UTC) >= expires  # shown free only once it has run out
    assert await page.evaluate("window.__sameDocument") is True
    assert await tab.evaluate("window.__sameDocument") is True


async def test_a_read_only_token_sees_only_its_prefix(site: Site, page: Page) -> None:
    await site.sign_in(page, site.reader)
    names = await page.locator("#contexts tbody tr td:first-child").all_inner_texts()
    assert names == ["notes.draft", "notes.fork", "notes.live", "notes.plan"]
    # A fork of a context it may not read: no lineage row, and the source's name nowhere.
    await page.goto(site.dashboard.base + "/c/notes.fork")
    await expect(page.locator("#facts")).to_contain_text("leasefree")
    await expect(page.locator("#facts")).not_to_contain_text("forked from")
    await expect(page.locator("body")).not_to_contain_text("secrets")
    await page.goto(site.dashboard.base + "/c/notes.fork/timeline")
    await expect(page.locator("#timeline tbody tr")).to_have_count(1)
    await expect(page.locator("#timeline tbody tr td").nth(3)).to_have_text("register")
    await page.goto(site.dashboard.base + "/c/secrets.keys")
    await expect(page.locator("main")).to_contain_text("no context named 'secrets.keys'")
    await expect(page.locator("main")).not_to_contain_text("hidden-value")
    await page.goto(site.dashboard.base + "/audit")
    await expect(page.locator("main")).to_contain_text("needs the admin grant")
    await site.shot(page, "read-only")


async def test_state_content_never_runs_as_script_and_the_csp_blocks_inline_script(site: Site, page: Page) -> None:
    await site.sign_in(page, site.admin)
    await page.goto(site.dashboard.base + "/c/notes.plan")
    note = page.locator("#state li", has_text="note")
    await expect(note).to_contain_text("<script>document.title='owned'</script>")  # shown as text
    assert await page.title() != "owned"

    # Were escaping ever to fail, the Content-Security-Policy still refuses inline script: put one
    # into the served page itself (the response's headers unchanged) and see that it does not run.
    async def inject(route: Route) -> None:
        response = await route.fetch()
        body = (await response.text()).replace("</main>", "<script>document.title='owned'</script></main>")
        await route.fulfill(response=response, body=body)

    await page.route(site.dashboard.base + "/c/notes.plan", inject)
    messages: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    await page.goto(site.dashboard.base + "/c/notes.plan")
    await expect(page.locator("h1")).to_have_text("notes.plan")
    assert await page.title() != "owned"
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


async def test_the_timeline_app_shows_history_and_a_diff_as_text(page: Page, tmp_path: Path) -> None:
    server = create_server(Settings(database=str(tmp_path / "app.sqlite"), tools="all"))
    async with Client(server) as client:
        await client.call_tool("register_context", {"name": "plan", "state": {"data": {"note": "a"}}})
        await client.call_tool("update_state", {"name": "plan", "data": {"note": INJECTED}})
        history = await client.call_tool("get_history", {"name": "plan"})
        diff = await client.call_tool("diff_states", {"name": "plan", "from_revision": 1, "to_revision": 2})
        document = (await client.read_resource(TIMELINE_APP_URI)).contents[0]
    assert isinstance(document, TextResourceContents)
    dump: dict[str, Any] = {"by_alias": True, "mode": "json", "exclude_none": True}

    await page.set_content(_HOST_PAGE)
    await page.evaluate(
        "([h, d, doc]) => window.start(h, d, doc)", [history.model_dump(**dump), diff.model_dump(**dump), document.text]
    )
    app = page.frame_locator("#app")
    await expect(app.locator("#title")).to_have_text("plan — revision 2")
    await expect(app.locator("#timeline tr")).to_have_count(3)  # a header and two revisions
    await app.locator("#compare").click()
    await expect(app.locator("#diff")).to_contain_text("Revision 1 → 2")
    await expect(app.locator("#diff")).to_contain_text("<script>document.title='owned'</script>")  # as text
    assert await page.evaluate("window.calls") == [
        {"name": "diff_states", "arguments": {"name": "plan", "from_revision": 1, "to_revision": 2}}
    ]
    assert all([await frame.title() != "owned" for frame in page.frames])
