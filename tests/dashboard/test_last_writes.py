"""The contexts list's "last writer" column on SQLite and PostgreSQL, sealed and not: one store
query for a whole page (``Store.last_writes``), the values exactly those of ``history``, and a
namespace never reading another's last writes."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from groundhog_mcp import StateManager
from groundhog_mcp.dashboard import DashboardConfig
from groundhog_mcp.models import ContextState, Principal
from groundhog_mcp.security.crypto import Keyring, generate_key, parse_key
from tests.conformance.conftest import MakeBackend
from tests.dashboard.conftest import AUDIT_KEY, Site
from tests.dashboard.test_pages import ADMIN, OUTSIDER, cells

BOB = Principal(name="bob", namespace="team")
CAROL = Principal(name="carol", namespace="team")
_KEYRING = Keyring(parse_key(generate_key(), source="the last-writes test's key"))


@pytest.fixture(params=["sqlite", "postgres", "sqlite-encrypted", "postgres-encrypted"])
async def sealed_site(request: pytest.FixtureRequest, make_backend: MakeBackend) -> AsyncGenerator[Site]:
    kind, _, sealed = str(request.param).partition("-")
    backend = await make_backend("sqlite" if kind == "sqlite" else "postgres")
    if sealed:
        backend = dataclasses.replace(backend, cipher=_KEYRING)
    manager = StateManager(backend.store(audit_signer=AUDIT_KEY))
    await manager.start()
    try:
        yield Site(manager, {"t-admin": ADMIN, "t-outsider": OUTSIDER}, DashboardConfig(audit_key=AUDIT_KEY))
    finally:
        await manager.close()


EXPECTED = {  # name: (last writer, how)
    "notes.a": ("alice", "register"),
    "notes.b": ("bob", "update"),
    "notes.c": ("carol", "rollback"),
    "notes.d": ("alice", "update"),
    "notes.e": ("bob", "update"),
    "notes.f": ("alice", "register"),
}


async def _seed(site: Site) -> None:
    team, bob, carol = (site.manager.with_principal(p) for p in (ADMIN, BOB, CAROL))
    for name in EXPECTED:
        await team.register(name, state=ContextState(data={"n": 0, "secret": "sealed-value"}))
    await bob.update("notes.b", merge_patch_={"n": 1})
    await carol.update("notes.c", merge_patch_={"n": 1})
    await carol.rollback("notes.c", 1)
    await bob.update("notes.d", merge_patch_={"n": 1})
    await team.update("notes.d", merge_patch_={"n": 2})
    await bob.update("notes.e", merge_patch_={"n": 1})
    other = site.manager.with_principal(OUTSIDER)  # the newest write of all, in another namespace
    await other.register("notes.a", state=ContextState(data={"x": 1}))
    await other.update("notes.a", merge_patch_={"x": 2})


def _count_store_reads(site: Site) -> dict[str, list[Any]]:
    """Record the store's transactions and its history / last-writes reads from now on."""
    store: Any = site.manager.store
    seen: dict[str, list[Any]] = {"transactions": [], "history": [], "last_writes": []}
    for method in seen:
        original = getattr(store, "_transaction" if method == "transactions" else method, None)
        if original is None:
            continue

        def counted(*args: Any, _original: Any = original, _seen: list[Any] = seen[method], **kwargs: Any) -> Any:
            # The server's own background tasks (the change feed's polls) are not the page's reads.
            task = asyncio.current_task()
            if task is None or not task.get_name().startswith("groundhog-"):
                _seen.append(args[1] if len(args) > 1 else args)
            return _original(*args, **kwargs)

        setattr(store, "_transaction" if method == "transactions" else method, counted)
    return seen


async def test_a_page_of_contexts_reads_its_last_writers_in_one_query(sealed_site: Site) -> None:
    site = sealed_site
    await _seed(site)
    expected_history = {}
    for name in EXPECTED:  # what history says, the reference the column must equal
        entry = (await site.manager.with_principal(ADMIN).history(name, limit=1))[0]
        expected_history[name] = (entry.actor, entry.op)
    assert expected_history == EXPECTED
    async with site.signed_in("t-admin") as browser:
        seen = _count_store_reads(site)
        page = await browser.get("/")
        assert page.status_code == 200
        rows = {r[0]: (r[4], r[5]) for r in cells(page.text, "contexts")}
        assert rows == EXPECTED
        assert len(seen["history"]) == 0  # no read per row
        assert len(seen["last_writes"]) == 1 and len(seen["last_writes"][0]) == len(EXPECTED)
        page_of_six = len(seen["transactions"])
        seen["transactions"].clear()
        one = await browser.get("/?prefix=notes.b")
        assert [(r[0], r[4], r[5]) for r in cells(one.text, "contexts")] == [("notes.b", "bob", "update")]
        assert len(seen["transactions"]) == page_of_six  # as many store queries for 1 context as for 6


async def test_last_writes_never_cross_namespaces(sealed_site: Site) -> None:
    site = sealed_site
    await _seed(site)
    team = site.manager.with_principal(ADMIN)
    other = site.manager.with_principal(OUTSIDER)
    mine = (await team.list(prefix="notes.", limit=50)).contexts
    theirs = (await other.list(prefix="notes.", limit=50)).contexts
    store = site.manager.store
    assert await store.last_writes("other", [c.id for c in mine]) == {}
    both = await store.last_writes("team", [c.id for c in mine + theirs])
    assert set(both) == {c.id for c in mine}
    assert await other.last_writes(mine) == {}  # the service reads in its principal's namespace
    assert {n: (e.actor, e.op) for n, e in (await other.last_writes(theirs)).items()} == {
        "notes.a": ("mallory", "update")
    }
    assert await store.last_writes("team", []) == {}
    async with site.signed_in("t-outsider") as browser:
        rows = cells((await browser.get("/")).text, "contexts")
        assert [(r[0], r[4], r[5]) for r in rows] == [("notes.a", "mallory", "update")]
