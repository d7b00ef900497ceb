"""SQLite's text index kept by the store core (groundhog_mcp/store/text_index.py), on real files.

Every test checks the index against the stored states themselves: for a vocabulary, the rows the
FTS5 table matches are exactly the plaintext rows whose data holds the word (:func:`check_index`,
an integrity check of what a contentless table can be asked). An update that cannot change a
string of the data runs no statement on the index (:func:`index_statements`) and leaves its
pages as they were (:func:`index_pages`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from groundhog_mcp import ContextState, StateManager
from groundhog_mcp.security.crypto import Keyring, generate_key, parse_key
from groundhog_mcp.service.events import Event
from groundhog_mcp.store import SQLiteStore
from groundhog_mcp.store.migrations import MIGRATIONS
from groundhog_mcp.store.text_index import same_text
from tests.service.test_migration import WITH_PLUGIN, v1

KEY = parse_key(generate_key(), source="test_text_index")
VOCABULARY = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "omega", "green", "tea")


def _sql(path: Path, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(query, params).fetchall()


@contextlib.asynccontextmanager
async def index_statements(manager: StateManager) -> AsyncIterator[list[str]]:
    """The statements on the text index that the store's connection runs meanwhile (with those of
    FTS5 itself on its shadow tables)."""
    store: Any = manager.store
    conn = store._conn
    seen: list[str] = []
    await store._call(conn.set_trace_callback, lambda sql: seen.append(sql) if "context_text" in sql else None)
    try:
        yield seen
    finally:
        await store._call(conn.set_trace_callback, None)


def index_pages(path: Path) -> str:
    """A digest of everything the FTS5 table stores (its segments, their index, the row sizes)."""
    digest = hashlib.sha256()
    for table in ("context_text_data", "context_text_idx", "context_text_docsize"):
        digest.update(repr(_sql(path, f"SELECT * FROM {table} ORDER BY 1, 2")).encode())
    return digest.hexdigest()


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def words_of(data: Any) -> set[str]:
    """The words FTS5's default tokenizer finds in the strings of ``data`` (ASCII text)."""
    return {w for s in _strings(data) for w in re.findall(r"[0-9a-z]+", s.lower())}


def check_index(path: Path, vocabulary: tuple[str, ...] = VOCABULARY) -> None:
    """For every word: the rows the index matches are the plaintext rows whose data holds it."""
    rows = _sql(path, "SELECT rowid, state FROM contexts WHERE typeof(state) = 'text'")
    words = {rowid: words_of(json.loads(state)["data"]) for rowid, state in rows}
    for word in vocabulary:
        indexed = {r[0] for r in _sql(path, "SELECT rowid FROM context_text WHERE context_text MATCH ?", (word,))}
        assert indexed == {rowid for rowid, found in words.items() if word in found}, word


async def found(manager: StateManager, text: str) -> list[str]:
    page = await manager.find(text=text, limit=100)
    assert page.next_cursor is None
    return [c.name for c in page.contexts]


# -- the skip rule ---------------------------------------------------------------------------

BEFORE: dict[str, Any] = {
    "data": {"n": 1, "s": "alpha", "tags": ["x", 2], "nums": [1, 2], "obj": {"k": 1, "t": "beta"}, "a/b": {"~": 3}},
    "metadata": {"owner": "someone"},
    "version": "1.0.0",
}

SAME_TEXT_CASES: list[tuple[str, list[dict[str, Any]] | None, bool]] = [
    ("no operations", [], True),
    ("a number", [{"op": "replace", "path": "/data/n", "value": 2}], True),
    ("numbers in a list", [{"op": "replace", "path": "/data/nums", "value": [3, 4, 5]}], True),
    ("a number in a list", [{"op": "replace", "path": "/data/tags/1", "value": False}], True),
    ("a number under escaped keys", [{"op": "replace", "path": "/data/a~1b/~0", "value": None}], True),
    ("a number in an object", [{"op": "replace", "path": "/data/obj/k", "value": {"deep": [1]}}], True),
    (
        "metadata and version",
        [{"op": "add", "path": "/metadata/x", "value": "s"}, {"op": "replace", "path": "/version", "value": "2.0.0"}],
        True,
    ),
    ("no patch", None, False),
    ("a string", [{"op": "replace", "path": "/data/s", "value": "gamma"}], False),
    ("a string by a number", [{"op": "replace", "path": "/data/s", "value": 1}], False),
    ("a number by a string", [{"op": "replace", "path": "/data/n", "value": "1"}], False),
    ("an object holding a string", [{"op": "replace", "path": "/data/obj", "value": 1}], False),
    ("a number by a list holding a string", [{"op": "replace", "path": "/data/n", "value": [1, ["s"]]}], False),
    ("an added number", [{"op": "add", "path": "/data/m", "value": 1}], False),
    ("a removed number", [{"op": "remove", "path": "/data/n"}], False),
    ("a removed number before a string", [{"op": "remove", "path": "/data/tags/0"}], False),
    ("a move out of the data", [{"op": "move", "from": "/data/s", "path": "/metadata/s"}], False),
    ("a copy into metadata", [{"op": "copy", "from": "/data/s", "path": "/metadata/s"}], False),
    ("the whole data", [{"op": "replace", "path": "/data", "value": {}}], False),
    ("the whole document", [{"op": "replace", "path": "", "value": {}}], False),
    ("a pointer that does not resolve", [{"op": "replace", "path": "/data/missing", "value": 1}], False),
    ("an index past the end", [{"op": "replace", "path": "/data/nums/2", "value": 1}], False),
    ("an index with a leading zero", [{"op": "replace", "path": "/data/nums/01", "value": 1}], False),
    ("a replace without a value", [{"op": "replace", "path": "/data/n"}], False),
    ("a test operation", [{"op": "test", "path": "/data/n", "value": 1}], False),
]


@pytest.mark.parametrize(("patch", "expected"), [c[1:] for c in SAME_TEXT_CASES], ids=[c[0] for c in SAME_TEXT_CASES])
def test_same_text_only_for_replacements_without_strings(patch: list[dict[str, Any]] | None, expected: bool) -> None:
    assert same_text(patch, BEFORE) is expected


# -- through the store ----------------------------------------------------------------------


async def test_an_update_that_changes_no_string_leaves_the_index_untouched(
    manager: StateManager, db_path: Path
) -> None:
    data = {"title": "green tea", "n": 1, "done": False, "tags": ["alpha", 2], "stats": {"a": 1, "b": [1, 2]}}
    await manager.register("t", state=ContextState(data=data))
    await manager.register("u", state=ContextState(data={"note": "beta"}))
    before = index_pages(db_path)
    async with index_statements(manager) as statements:
        await manager.update("t", merge_patch_={"n": 2, "done": True, "stats": {"a": 1.5, "b": [3, {"x": None}]}})
        await manager.update("t", patch=[{"op": "replace", "path": "/tags/1", "value": 3}])
        await manager.update("t", metadata={"owner": "gamma"})  # metadata is not indexed
    assert statements == []
    assert index_pages(db_path) == before
    assert (await manager.get("t")).revision == 4
    assert (await manager.get("t")).state.data["stats"] == {"a": 1.5, "b": [3, {"x": None}]}
    assert await found(manager, "green alpha") == ["t"]
    assert await found(manager, "gamma") == []
    check_index(db_path)
    async with index_statements(manager) as statements:
        await manager.update("t", merge_patch_={"n": 3, "title": "green"})  # a string: the index follows
    assert [s.split(" SELECT")[0] for s in statements if s.startswith("INSERT INTO context_text ")] == [
        "INSERT INTO context_text (context_text, rowid, body)",
        "INSERT INTO context_text (rowid, body)",
    ]
    assert await found(manager, "tea") == []
    assert await found(manager, "green") == ["t"]
    check_index(db_path)


MIXED_CASES: list[tuple[str, dict[str, Any], list[dict[str, Any]], dict[str, list[str]]]] = [
    (
        "remove a list item holding a string",
        {"items": [{"t": "alpha", "n": 1}, {"t": "beta", "n": 2}]},
        [{"op": "remove", "path": "/items/0"}],
        {"alpha": [], "beta": ["c"]},
    ),
    (
        "remove a number before a string",
        {"items": [1, "alpha"]},
        [{"op": "remove", "path": "/items/0"}],
        {"alpha": ["c"]},
    ),
    (
        "add a list item holding a string",
        {"items": [{"n": 1, "t": "alpha"}]},
        [{"op": "add", "path": "/items/0", "value": {"t": "gamma", "n": 0}}],
        {"alpha": ["c"], "gamma": ["c"]},
    ),
    ("a string by a number", {"s": "delta", "n": 1}, [{"op": "replace", "path": "/s", "value": 3}], {"delta": []}),
    ("a number by a string", {"s": 3}, [{"op": "replace", "path": "/s", "value": "epsilon"}], {"epsilon": ["c"]}),
    (
        "an object holding strings by a number",
        {"obj": {"a": "zeta", "b": {"c": ["eta"]}}, "keep": "theta"},
        [{"op": "replace", "path": "/obj", "value": 7}],
        {"zeta": [], "eta": [], "theta": ["c"]},
    ),
    (
        "a number by an object holding a string",
        {"obj": 7},
        [{"op": "replace", "path": "/obj", "value": {"x": ["omega"]}}],
        {"omega": ["c"]},
    ),
    (
        "a move of a string",
        {"a": "alpha", "b": 1},
        [{"op": "move", "from": "/a", "path": "/b"}],
        {"alpha": ["c"]},
    ),
    (
        "a string and a number together",
        {"s": "alpha", "n": 1},
        [{"op": "replace", "path": "/n", "value": 2}, {"op": "replace", "path": "/s", "value": "beta"}],
        {"alpha": [], "beta": ["c"]},
    ),
]


@pytest.mark.parametrize(("data", "patch", "expected"), [c[1:] for c in MIXED_CASES], ids=[c[0] for c in MIXED_CASES])
async def test_patches_that_change_strings_keep_the_index_right(
    manager: StateManager,
    db_path: Path,
    data: dict[str, Any],
    patch: list[dict[str, Any]],
    expected: dict[str, list[str]],
) -> None:
    await manager.register("c", state=ContextState(data=data))
    await manager.register("other", state=ContextState(data={"t": "unrelated"}))
    await manager.update("c", patch=patch)
    for word, names in expected.items():
        assert await found(manager, word) == names, word
    check_index(db_path)


async def test_a_random_sequence_of_updates_keeps_the_index_right(manager: StateManager, db_path: Path) -> None:
    rng = random.Random(14)
    names = ["c0", "c1", "c2", "c3"]

    def value(depth: int = 0) -> Any:
        kind = rng.randrange(6 if depth < 2 else 4)
        if kind == 0:
            return rng.randrange(100)
        if kind == 1:
            return rng.random() < 0.5
        if kind == 2:
            return " ".join(rng.sample(VOCABULARY, rng.randrange(1, 3)))
        if kind == 3:
            return None
        if kind == 4:
            return [value(depth + 1) for _ in range(rng.randrange(3))]
        return {k: value(depth + 1) for k in rng.sample(["a", "b", "c"], rng.randrange(3))}

    for name in names:
        await manager.register(name, state=ContextState(data={"s": value(), "n": 0, "list": [value(), value()]}))
    skipped = indexed = 0
    for step in range(200):
        name = rng.choice(names)
        data = dict((await manager.get(name)).state.data)
        choice = rng.randrange(5)
        if choice == 0:  # numbers and flags only, the common agent update
            data["n"] = step
            data["flag"] = rng.random() < 0.5
        elif choice == 1:
            data[rng.choice(["s", "t", "n"])] = value()
        elif choice == 2:
            items = list(data.get("list") or [])
            if items and rng.random() < 0.5:
                items.pop(rng.randrange(len(items)))
            else:
                items.insert(rng.randrange(len(items) + 1), value())
            data["list"] = items
        elif choice == 3:
            data.pop(rng.choice(["s", "t", "flag", "list"]), None)
        async with index_statements(manager) as statements:
            if choice == 4:
                await manager.rollback(name, rng.randrange(1, (await manager.get(name)).revision + 1))
            else:
                await manager.update(name, data=data)
        skipped, indexed = (skipped, indexed + 1) if statements else (skipped + 1, indexed)
        if step % 20 == 0:
            check_index(db_path)
    check_index(db_path)
    assert skipped > 20 and indexed > 20, (skipped, indexed)
    for word in VOCABULARY:
        expected = [n for n in names if word in words_of((await manager.get(n)).state.data)]
        assert await found(manager, word) == expected, word


async def test_rollback_merge_event_and_migrate_keep_the_index_right(manager: StateManager, db_path: Path) -> None:
    await manager.register("r", state=ContextState(data={"note": "alpha", "n": 1}))
    await manager.update("r", data={"note": "beta", "n": 2})
    await manager.rollback("r", 1)
    assert (await found(manager, "alpha"), await found(manager, "beta")) == (["r"], [])
    check_index(db_path)

    await manager.register("m1", state=ContextState(data={"x": "gamma", "n": 1}))
    await manager.register("m2", state=ContextState(data={"y": "delta", "n": 2}))
    await manager.merge([{"context": "m1"}, {"context": "m2"}], target="m2")
    assert await found(manager, "gamma") == ["m1", "m2"]
    check_index(db_path)

    handlers = {"label": {"action": "set", "path": "/label", "value_from": "/text"}}
    await manager.register("e", state=ContextState(data={"label": "epsilon"}), handlers=handlers)
    await manager.emit_event("e", Event(type="label", payload={"text": "zeta"}))
    assert (await found(manager, "epsilon"), await found(manager, "zeta")) == ([], ["e"])
    check_index(db_path)

    await manager.register("v", settings={"state_format": WITH_PLUGIN}, state=ContextState(data=v1(1)))
    assert await found(manager, "normal") == []
    report = await manager.migrate("v")
    assert report.migrated == 1
    assert await found(manager, "normal") == ["v"]  # the new format's priority
    check_index(db_path, (*VOCABULARY, "normal", "task", "owner"))


async def test_sealing_an_unregistered_state_takes_its_words_out(db_path: Path) -> None:
    async with StateManager.open(db_path) as manager:
        await manager.register("p", state=ContextState(data={"note": "alpha beta"}))
        await manager.register("q", state=ContextState(data={"note": "alpha"}))
    sealing = StateManager(SQLiteStore(db_path, cipher=Keyring(KEY)))
    await sealing.start()
    try:
        await sealing.update("q", merge_patch_={"n": 1})  # a plaintext state sealed by an update
        await sealing.unregister("p")  # unregistered under a key: sealed again, its words go
    finally:
        await sealing.close()
    assert _sql(db_path, "SELECT name, typeof(state) FROM contexts ORDER BY name") == [("p", "blob"), ("q", "blob")]
    assert _sql(db_path, "SELECT count(*) FROM context_text WHERE context_text MATCH 'alpha'") == [(0,)]
    check_index(db_path)


async def test_migration_12_drops_the_update_trigger_and_keeps_the_index(db_path: Path) -> None:
    async with StateManager.open(db_path) as manager:
        await manager.register("c", state=ContextState(data={"note": "alpha", "n": 1}))
    # A database as schema 11 left it: the update trigger in place, the index as it wrote it.
    trigger = re.search(r"CREATE TRIGGER context_text_update .*?END;", MIGRATIONS[8].sqlite, re.S)
    assert trigger is not None
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute(trigger.group(0))
        conn.execute("DELETE FROM schema_migrations WHERE version = 12")
        conn.execute("UPDATE contexts SET state = json_set(state, '$.data.note', 'beta')")
    check_index(db_path)
    async with StateManager.open(db_path) as manager:
        assert _sql(
            db_path, "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'context_text%' ORDER BY name"
        ) == [
            ("context_text_delete",),
            ("context_text_insert",),
        ]
        await manager.update("c", merge_patch_={"n": 2})
        await manager.update("c", merge_patch_={"note": "gamma"})
        assert (await found(manager, "beta"), await found(manager, "gamma")) == ([], ["c"])
    check_index(db_path)
