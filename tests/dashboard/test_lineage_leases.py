"""The dashboard's lineage, lease and expiry rows on SQLite and PostgreSQL: what the context page
and the list show, that a reader never sees the name of a source it may not read, and that a
page of contexts reads its leases in one query."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from groundhog_mcp.models import ContextState, Grant, Principal, format_timestamp, parse_timestamp
from tests.dashboard.conftest import Site
from tests.dashboard.test_pages import ADMIN, cells

READER = Principal(name="rita", namespace="team", grants=(Grant.parse("read:notes."),))


def shown(moment: datetime) -> str:
    """A time as the pages show it (to the millisecond)."""
    return format_timestamp(moment)[:23] + "Z"


def facts(html: str) -> dict[str, str]:
    """The context page's facts: ``<dt>`` → the ``<dd>`` with its markup."""
    section = re.search(r'<section id="facts"[^>]*>(.*?)</section>', html, re.S)
    assert section is not None
    return dict(re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", section.group(1), re.S))


async def _lineage(site: Site) -> None:
    team = site.manager.with_principal(ADMIN)
    await team.register("secrets.src", state=ContextState(data={"plan": "p", "n": 1}))
    await team.register("notes.other", state=ContextState(data={"x": 1}))
    await team.fork("secrets.src", "notes.fork")  # notes.fork@1 descends from secrets.src@1
    await team.merge([{"context": "notes.fork"}, {"context": "notes.other"}], target="notes.fork")  # @2
    await team.update("secrets.src", merge_patch_={"n": 2})
    await team.merge([{"context": "notes.fork"}, {"context": "secrets.src"}], target="notes.fork")  # @3
    site.tokens.update({"t-admin": ADMIN, "t-reader": READER})


async def test_the_context_page_shows_lineage_with_links(site: Site) -> None:
    await _lineage(site)
    async with site.signed_in("t-admin") as browser:
        shown = facts((await browser.get("/c/notes.fork")).text)
        assert shown["forked from"] == '<a href="/c/secrets.src?revision=1">secrets.src@1</a>'
        assert shown["merged in"] == (
            '<a href="/c/secrets.src?revision=2">secrets.src@2</a>, '
            '<a href="/c/notes.other?revision=1">notes.other@1</a>'
        )
        assert "forked from" not in facts((await browser.get("/c/notes.other")).text)
        timeline = cells((await browser.get("/c/notes.fork/timeline")).text, "timeline")
        assert [(r[2], r[3]) for r in timeline] == [
            ("3", "merge ← secrets.src@2"),
            ("2", "merge ← notes.other@1"),
            ("1", "register ← secrets.src@1"),
        ]


async def test_a_reader_never_sees_the_name_of_a_source_it_may_not_read(site: Site) -> None:
    await _lineage(site)
    async with site.signed_in("t-reader") as browser:
        page = await browser.get("/c/notes.fork")
        assert page.status_code == 200
        shown = facts(page.text)
        assert "forked from" not in shown
        assert shown["merged in"] == '<a href="/c/notes.other?revision=1">notes.other@1</a>'
        timeline = await browser.get("/c/notes.fork/timeline")
        assert [(r[2], r[3]) for r in cells(timeline.text, "timeline")] == [
            ("3", "merge"),
            ("2", "merge ← notes.other@1"),
            ("1", "register"),
        ]
        for path in ["/", "/c/notes.fork", "/c/notes.fork/timeline", "/c/notes.fork/diff?from=1", "/events"]:
            assert "secrets" not in (await browser.get(path)).text, path


async def test_leases_and_expiry_in_the_list_and_on_the_context_page(site: Site) -> None:
    team = site.manager.with_principal(ADMIN)
    await team.register("notes.plan")
    await team.register("notes.temp", settings={"ttl_seconds": 3600})
    await team.register("notes.idle", settings={"expire_after_idle_seconds": 600})
    site.tokens["t-admin"] = ADMIN
    grant = await team.take_lease("notes.plan", ttl_seconds=120, holder="agent-7")
    assert grant.lease.expires_at is not None
    until = shown(grant.lease.expires_at)
    temp = await team.get("notes.temp")
    idle = await team.get("notes.idle")
    temp_expiry = str(temp.settings["expires_at"])
    reads: list[int] = []
    read_leases = site.manager.store.read_leases

    async def counted(context_ids: Any) -> Any:
        reads.append(len(context_ids))
        return await read_leases(context_ids)

    site.manager.store.read_leases = counted  # type: ignore[method-assign]
    async with site.signed_in("t-admin") as browser:
        rows = {r[0]: r[6:] for r in cells((await browser.get("/")).text, "contexts")}
        assert reads == [3]  # the page's leases in one query
        assert rows["notes.plan"] == [f"alice/agent-7 until {until}", ""]
        assert rows["notes.temp"] == ["", shown(parse_timestamp(temp_expiry))]
        assert rows["notes.idle"] == ["", shown(idle.updated_at + timedelta(seconds=600))]
        plan = facts((await browser.get("/c/notes.plan")).text)
        assert (plan["lease"], plan["expires"]) == (f"held by alice/agent-7 until {until}", "never")
        assert facts((await browser.get("/c/notes.temp")).text)["lease"] == "free"
        idle_page = facts((await browser.get("/c/notes.idle")).text)
        assert idle_page["expires"] == shown(idle.updated_at + timedelta(seconds=600))  # the last write + idle
        await team.release_lease("notes.plan", grant.lease.token)
        assert facts((await browser.get("/c/notes.plan")).text)["lease"] == "free"
        assert {r[0]: r[6] for r in cells((await browser.get("/")).text, "contexts")}["notes.plan"] == ""
