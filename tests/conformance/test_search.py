"""find_contexts on every backend: each operator, combinations, text, sorting and keyset paging
under concurrent writes, grants and namespaces (a foreign context is never counted), encryption
at rest (what is refused, with which error), indexes (the query plan), the work budget."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from groundhog_mcp import StateManager
from groundhog_mcp.errors import BudgetError, LimitExceededError, SealedSearchError, StateValidationError
from groundhog_mcp.models import DEFAULT_NAMESPACE, ContextState, Grant, Principal, utcnow
from groundhog_mcp.security.crypto import Keyring, generate_key, parse_key
from groundhog_mcp.service.search import FindPage
from groundhog_mcp.store import maintenance
from groundhog_mcp.store.search import SQLITE_SEARCH, Condition, SearchQuery, build, index_statement, parse_ref

from .conftest import POSTGRES_URL, Backend, MakeBackend

KEY = parse_key(generate_key(), source="test_search")
KEYRING = Keyring(KEY)

ITEMS: dict[str, dict[str, Any]] = {
    "a1": {"n": 1, "s": "apple", "tags": ["red", "x"], "done": True, "note": "buy the green apples"},
    "a2": {"n": 2.5, "s": "banana", "tags": ["yellow"], "done": False, "nothing": None},
    "a3": {"n": 3, "s": "cherry", "tags": [3, "red"], "done": True, "note": "cherry pie recipe"},
    "b1": {"n": "3", "s": "date", "tags": [], "nested": {"k": 10}},
    "b2": {"n": True, "s": {"obj": 1}, "tags": "red", "nested": {"k": 20}},
    "b3": {"s": "elder", "note": "Green tea and apple"},
}


def plain(backend: Backend) -> None:
    if backend.cipher is not None:
        pytest.skip("state conditions are refused with encryption at rest (test_encrypted_* cover it)")


async def seed(manager: StateManager) -> None:
    for name, data in ITEMS.items():
        await manager.register(name, state=ContextState(data=data), metadata={"team": name[0], "rank": int(name[1])})


async def names(manager: StateManager, **request: Any) -> list[str]:
    found: list[str] = []
    cursor: str | None = None
    while True:
        page: FindPage = await manager.find(cursor=cursor, **request)
        found += [f.name for f in page.contexts]
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


def where(path: str, op: str, value: Any = None) -> dict[str, Any]:
    return {"path": path, "op": op, "value": value}


OPERATOR_CASES = [
    (where("/data/s", "eq", "apple"), ["a1"]),
    (where("/data/n", "eq", 3), ["a3"]),  # not the string "3" (b1) nor true (b2)
    (where("/data/n", "eq", 3.0), ["a3"]),
    (where("/data/n", "eq", "3"), ["b1"]),
    (where("/data/done", "eq", True), ["a1", "a3"]),
    (where("/data/n", "eq", 1), ["a1"]),  # true is not 1
    (where("/data/nothing", "eq", None), ["a2"]),
    (where("/data/s", "ne", "apple"), ["a2", "a3", "b1", "b2", "b3"]),
    (where("/data/done", "ne", True), ["a2", "b1", "b2", "b3"]),  # missing counts as not equal
    (where("/data/n", "lt", 3), ["a1", "a2"]),
    (where("/data/n", "le", 3), ["a1", "a2", "a3"]),
    (where("/data/n", "gt", 1), ["a2", "a3"]),
    (where("/data/n", "ge", 2.5), ["a2", "a3"]),
    (where("/data/s", "gt", "cherry"), ["b1", "b3"]),  # strings only; the object at b2 is no string
    (where("/data/s", "le", "banana"), ["a1", "a2"]),
    (where("/data/n", "in", [1, "3", None, 2.5]), ["a1", "a2", "b1"]),
    (where("/data/done", "in", [False, True]), ["a1", "a2", "a3"]),
    (where("/data/tags", "contains", "red"), ["a1", "a3", "b2"]),  # array item, or substring of a string
    (where("/data/tags", "contains", 3), ["a3"]),
    (where("/data/note", "contains", "apple"), ["a1", "b3"]),  # case-sensitive substring
    (where("/data/tags/0", "eq", "red"), ["a1"]),
    (where("/data/nested/k", "ge", 15), ["b2"]),
    (where("/data/nothing", "exists", True), ["a2"]),
    (where("/data/note", "exists", False), ["a2", "b1", "b2"]),
    (where("/data/tags/1", "exists"), ["a1", "a3"]),
    (where("/metadata/missing", "exists", False), ["a1", "a2", "a3", "b1", "b2", "b3"]),
    (where("/context_metadata/team", "eq", "b"), ["b1", "b2", "b3"]),
    (where("/context_metadata/rank", "gt", 2), ["a3", "b3"]),
]


@pytest.mark.parametrize(
    ("condition", "expected"), OPERATOR_CASES, ids=[f"{c['path']} {c['op']}" for c, _ in OPERATOR_CASES]
)
async def test_every_operator(
    manager: StateManager, backend: Backend, condition: dict[str, Any], expected: list[str]
) -> None:
    plain(backend)
    await seed(manager)
    assert await names(manager, where=[condition], limit=2) == expected


async def test_conditions_prefix_and_update_time_combine(manager: StateManager, backend: Backend) -> None:
    plain(backend)
    await seed(manager)
    assert await names(
        manager, prefix="a", where=[where("/data/tags", "contains", "red"), where("/data/n", "gt", 1)]
    ) == ["a3"]
    cut = utcnow()
    await manager.update("a2", merge_patch_={"n": 9})
    assert await names(manager, updated_after=cut) == ["a2"]
    assert await names(manager, updated_before=cut) == ["a1", "a3", "b1", "b2", "b3"]
    assert await names(manager, updated_after=cut, where=[where("/data/n", "ge", 9)]) == ["a2"]
    assert await names(manager, updated_after=cut + timedelta(hours=1)) == []


async def test_text_search_finds_every_word_and_follows_writes(manager: StateManager, backend: Backend) -> None:
    plain(backend)
    await seed(manager)
    assert await names(manager, text="green") == ["a1", "b3"]  # case-insensitive words
    assert await names(manager, text="GREEN apple") == ["a1", "b3"]  # in any string of the data
    assert await names(manager, text="green TEA") == ["b3"]  # every word
    assert await names(manager, text="recipe", prefix="b") == []
    assert await names(manager, text="appl") == []  # words, not substrings ("apples" is another word)
    await manager.update("a1", data={"note": "nothing to see"})
    await manager.update("b1", merge_patch_={"extra": ["a green leaf"]})
    assert await names(manager, text="green") == ["b1", "b3"]
    await manager.unregister("b3")
    assert await names(manager, text="green") == ["b1"]
    await manager.unregister("b1", purge=True)
    assert await names(manager, text="green") == []
    if backend.kind == "sqlite":  # the purged row's text is gone from the index, not only hidden
        assert await backend.sql("SELECT count(*) FROM context_text WHERE context_text MATCH 'leaf'") == [(0,)]


async def test_sorting_by_pointer_and_update_time_pages_through_everything(
    manager: StateManager, backend: Backend
) -> None:
    plain(backend)
    await seed(manager)
    # numbers, then strings, then other values, then missing; by name within equal keys
    assert await names(manager, sort="/data/n", limit=2) == ["a1", "a2", "a3", "b1", "b2", "b3"]
    assert await names(manager, sort="/data/n", order="desc", limit=4) == ["b3", "b2", "b1", "a3", "a2", "a1"]
    assert await names(manager, sort="/data/s", limit=1) == ["a1", "a2", "a3", "b1", "b3", "b2"]
    await manager.update("a1", merge_patch_={"v": 1})
    assert await names(manager, sort="updated_at", limit=2) == ["a2", "a3", "b1", "b2", "b3", "a1"]
    assert await names(manager, sort="updated_at", order="desc", limit=5) == ["a1", "b3", "b2", "b1", "a3", "a2"]


@pytest.mark.parametrize("sort", ["name", "/data/n", "updated_at"])
async def test_paging_neither_skips_nor_repeats_under_concurrent_writes(
    manager: StateManager, backend: Backend, sort: str
) -> None:
    plain(backend)
    stable = [f"s{i:02d}" for i in range(24)]
    for i, name in enumerate(stable):
        await manager.register(name, state=ContextState(data={"n": i % 5, "other": 0}))
    seen: list[str] = []
    cursor: str | None = None
    turn = 0

    async def churn() -> None:
        # Writes between (and during) pages: other fields of found contexts change, new contexts
        # come and go all over the key range. None may move a stable context across the cursor.
        nonlocal turn
        turn += 1
        for name in stable[turn % 7 :: 5]:
            if sort != "updated_at":
                await manager.update(name, merge_patch_={"other": turn})
        await manager.register(f"s{turn % 24:02d}x{turn}", state=ContextState(data={"n": turn % 5}))
        if turn > 2:
            await manager.unregister(f"s{(turn - 2) % 24:02d}x{turn - 2}")

    while True:
        page, _ = await asyncio.gather(manager.find(sort=sort, cursor=cursor, limit=3), churn())
        seen += [f.name for f in page.contexts if "x" not in f.name]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(seen) == stable and len(seen) == len(stable)


async def test_fields_project_a_sparse_copy_and_list_what_is_missing(manager: StateManager, backend: Backend) -> None:
    await seed(manager)
    page = await manager.find(prefix="a", fields=["/data/s", "/data/tags/1", "/metadata", "/data/nope"], limit=2)
    a1, a2 = page.contexts
    assert (a1.name, a1.revision) == ("a1", 1)
    assert a1.fields == {"data": {"s": "apple", "tags": {"1": "x"}}, "metadata": {}}
    assert a1.missing == ["/data/nope"]
    assert a2.fields == {"data": {"s": "banana"}, "metadata": {}}
    assert a2.missing == ["/data/tags/1", "/data/nope"]
    plain_page = await manager.find(prefix="a", limit=1)
    assert plain_page.contexts[0].fields is None  # nothing but name, revision, update time unless asked


async def test_a_foreign_namespace_and_unreadable_contexts_are_never_counted(
    manager: StateManager, backend: Backend
) -> None:
    await seed(manager)
    await manager.register("pub.1", state=ContextState(data={"s": "apple"}), metadata={"team": "a"})
    outsider = manager.with_principal(Principal(name="o", namespace="other"))
    await outsider.register("a9", state=ContextState(data={"s": "apple"}), metadata={"team": "a"})
    reader = manager.with_principal(Principal(name="r", grants=(Grant("pub.", "read"),)))
    conditions = [where("/context_metadata/team", "eq", "a")]
    assert await names(outsider, where=conditions) == ["a9"]
    assert await names(reader, where=conditions) == ["pub.1"]
    # Nothing readable matches: an empty page with no cursor, exactly as if nothing existed.
    empty = await reader.find(where=[where("/context_metadata/team", "eq", "b")], limit=1)
    assert empty == FindPage([], None)
    nobody = manager.with_principal(Principal(name="n", grants=()))
    assert await nobody.find(where=conditions) == FindPage([], None)
    if backend.cipher is None:
        assert await names(reader, text="apple") == ["pub.1"]
        assert await names(outsider, where=[where("/data/s", "eq", "apple")]) == ["a9"]
        assert await names(manager, text="apple", prefix="a") == ["a1"]  # "a9" is another namespace's


@pytest.mark.parametrize(
    ("request_", "refused"),
    [
        ({"where": [where("/data/s", "eq", "apple")]}, "/data/s: encryption at rest is on"),
        ({"where": [where("/metadata/x", "exists")]}, "/metadata/x: encryption at rest is on"),
        ({"text": "apple"}, "text: encryption at rest is on"),
        ({"sort": "/data/n"}, "sort /data/n: encryption at rest is on"),
    ],
)
async def test_encrypted_state_searches_are_refused_with_the_reason(
    manager: StateManager, backend: Backend, request_: dict[str, Any], refused: str
) -> None:
    if backend.cipher is None:
        pytest.skip("encryption at rest only")
    await seed(manager)
    with pytest.raises(SealedSearchError) as error:
        await manager.find(**request_)
    assert error.value.code == "sealed"
    assert str(error.value).startswith(refused)
    assert "searchable: name prefix, updated_after/updated_before" in str(error.value)
    assert "apple" not in str(error.value)
    # What is stored in plaintext stays searchable.
    assert await names(manager, prefix="b", where=[where("/context_metadata/rank", "le", 2)], sort="updated_at") == [
        "b1",
        "b2",
    ]


async def test_a_state_index_is_refused_with_encryption_and_declared_indexes_are_checked(
    manager: StateManager, backend: Backend
) -> None:
    settings = {"search_indexes": ["/data/status"]}
    if backend.cipher is not None:
        with pytest.raises(SealedSearchError):
            await manager.register("c", settings=settings)
        assert await manager.find() == FindPage([], None)  # refused before anything was written
        return
    await manager.register("c", settings=settings, state=ContextState(data={"status": "open"}))
    assert await names(manager, where=[where("/data/status", "eq", "open")]) == ["c"]
    with pytest.raises(StateValidationError) as bad:
        await manager.register("d", settings={"search_indexes": ["/other/x"]})
    assert (
        str(bad.value)
        == "settings.search_indexes[0]: must start with /data, /metadata or /context_metadata; got '/other/x'"
    )


async def test_bad_requests_name_the_field_and_the_rule(manager: StateManager) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"where": [where("data/s", "eq", 1)]}, "where[0].path: must be a JSON Pointer starting with '/' (RFC 6901)"),
        ({"where": [{"path": "/data/s", "op": "like", "value": 1}]}, "where[0].op: must be one of eq, ne, lt, le"),
        ({"where": [where("/data/s", "lt", True)]}, "where[0].value: lt compares numbers or strings"),
        ({"where": [where("/data/s", "in", [])]}, "where[0].value: in takes a list of 1 to 100 values"),
        ({"where": [where("/data/s", "eq", {"a": 1})]}, "where[0].value: must be a string, number, boolean or null"),
        ({"where": [{"path": "/data/s", "op": "eq"}]}, "where[0].value: eq needs a value"),
        ({"where": [where('/data/a"b', "eq", 1)]}, "where[0].path: a segment may not contain a double quote"),
        ({"where": [where("/data/x", "exists")] * 17}, "where: at most 16 conditions; got 17"),
        ({"text": "  ...  "}, "text: needs at least one word"),
        ({"sort": "size"}, "sort: must be a JSON Pointer starting with '/'"),
        ({"limit": 101}, "limit: must be between 1 and 100; got 101"),
        ({"cursor": "bm9wZQ"}, "cursor: not a cursor this server issued"),
        ({"fields": ["nope"]}, "fields[0]: must be a JSON Pointer starting with '/'"),
    ]
    for request_, message in cases:
        with pytest.raises(StateValidationError) as bad:
            await manager.find(**request_)
        assert str(bad.value).startswith(message), (request_, str(bad.value))
    await manager.register("a")
    await manager.register("b")
    page = await manager.find(limit=1)
    with pytest.raises(StateValidationError, match="cursor: was issued for another sort or order"):
        await manager.find(cursor=page.next_cursor, sort="updated_at")


async def test_an_indexed_pointer_is_an_index_lookup(manager: StateManager, backend: Backend) -> None:
    plain(backend)
    ref = parse_ref("/data/status", "test")
    await manager.store.ensure_search_indexes((ref,))
    for i in range(40):
        await manager.register(f"c{i}", state=ContextState(data={"status": "open" if i % 4 else "done", "n": i}))
    assert await names(manager, where=[where("/data/status", "eq", "done")]) == [
        "c0",
        "c12",
        "c16",
        "c20",
        "c24",
        "c28",
        "c32",
        "c36",
        "c4",
        "c8",
    ]
    plans = await explain(backend, manager, query(conditions=(on("/data/status", "eq", "done"),)))
    index = index_statement(SQLITE_SEARCH, ref).split()[5]  # CREATE INDEX IF NOT EXISTS <name> ...
    assert index in plans, plans
    ranged = await explain(backend, manager, query(conditions=(on("/data/status", "gt", "d"),)))
    assert index in ranged, ranged
    unindexed = await explain(backend, manager, query(conditions=(on("/data/n", "gt", 3),)))
    lookups = [line for line in unindexed.splitlines() if "Index Cond" in line or "USING INDEX" in line]
    assert not any("'n'" in line or '$."data"."n"' in line for line in lookups), unindexed
    texts = await explain(backend, manager, query(words=("open",)))
    assert ("context_text" if backend.kind == "sqlite" else "contexts_text") in texts, texts


async def explain(backend: Backend, manager: StateManager, query: SearchQuery) -> str:
    """The query plan of the SELECT a find runs (PostgreSQL: with sequential scans priced out, so
    a tiny table still shows which index the query can use)."""
    store: Any = manager.store
    sql, params = build(store.SEARCH, query, "name", store._indexed)
    if backend.kind == "sqlite":
        rows = await backend.sql("EXPLAIN QUERY PLAN " + sql, tuple(params))
        return "\n".join(str(r[-1]) for r in rows)
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await conn.execute(f'SET search_path TO "{backend.pg_schema}"')
        await conn.execute("ANALYZE contexts")
        await conn.execute("SET enable_seqscan = off")
        cur = await conn.execute("EXPLAIN " + sql, params)  # type: ignore[arg-type]
        return "\n".join(str(r[0]) for r in await cur.fetchall())


def query(**fields: Any) -> SearchQuery:
    return SearchQuery(namespace=DEFAULT_NAMESPACE, prefixes=("",), **fields)


def on(pointer: str, op: str, value: Any) -> Condition:
    return Condition(parse_ref(pointer, "test"), op, value)


async def test_a_query_past_its_budget_stops_with_budget_and_changes_nothing(
    manager: StateManager, backend: Backend
) -> None:
    plain(backend)
    big = list(range(60_000))
    for i in range(3):
        await manager.register(f"big{i}", state=ContextState(data={"items": big, "s": f"v{i}"}))
    store: Any = manager.store
    store.search_budget_ms = 1
    with pytest.raises(BudgetError) as stopped:
        await manager.find(where=[where("/data/items", "contains", 59_999)], sort="/data/s")
    assert stopped.value.code == "budget"
    assert str(stopped.value).startswith("search: the query ran past its budget of 1 ms (search_budget_ms)")
    store.search_budget_ms = 60_000
    assert await names(manager, where=[where("/data/items", "contains", 59_999)]) == ["big0", "big1", "big2"]


async def test_sealing_a_plaintext_state_removes_its_words_and_opening_it_restores_them(
    make_backend: MakeBackend,
) -> None:
    backend = await make_backend("sqlite")
    plain_store = backend.store()
    manager = StateManager(plain_store)
    await manager.start()
    await manager.register("n", state=ContextState(data={"note": "secret meeting at noon", "nul": "a\u0000b"}))
    assert await names(manager, text="meeting") == ["n"]
    await manager.close()
    words = "SELECT count(*) FROM context_text WHERE context_text MATCH 'meeting'"
    sealing = dataclasses.replace(backend, cipher=KEYRING).store()
    await sealing.open()
    assert await maintenance(sealing).rotate_keys()
    await sealing.close()
    assert await backend.sql(words) == [(0,)]  # no plaintext of a sealed state in the index
    opening = backend.store(cipher=Keyring(None, (KEY,)))  # old key only: back to plaintext
    await opening.open()
    assert await maintenance(opening).rotate_keys()
    await opening.close()
    assert await backend.sql(words) == [(1,)]
    assert await backend.sql("INSERT INTO context_text (context_text) VALUES ('integrity-check')") == []


async def test_definitions_cannot_add_search_indexes_without_bound(manager: StateManager, backend: Backend) -> None:
    plain(backend)
    for n in range(4):
        pointers = [f"/data/k{n}_{i}" for i in range(8)]
        await manager.register(f"def{n}", settings={"search_indexes": pointers})
    with pytest.raises(LimitExceededError) as refused:
        await manager.register("one.more", settings={"search_indexes": ["/data/other"]})
    assert str(refused.value) == (
        "search_indexes: a database holds at most 32 search indexes; 32 exist and 1 more were asked for"
    )
    assert await manager.find(prefix="one.") == FindPage([], None)  # refused before anything was written
    await manager.register("same.again", settings={"search_indexes": ["/data/k0_0"]})  # an existing one is fine
