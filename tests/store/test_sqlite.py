"""The SQLite store on real files: migrations, refusal of bad files, revisions, sequences, export."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from groundhog_mcp import ContextState, InitializationError, StateManager, StateUpdateError
from groundhog_mcp.store import SQLiteStore
from groundhog_mcp.store.migrations import LATEST_SCHEMA_VERSION, MIGRATIONS


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_migrations_are_applied_and_recorded(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    await store.open()
    status = await store.status()
    await store.close()
    assert status.schema_version == LATEST_SCHEMA_VERSION and status.pending_migrations == []
    assert status.extra["journal_mode"] == "wal"
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]
        # WAL is a property of the file: a new connection finds it (synchronous is per connection,
        # see test_pragmas_for_durability).
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_pragmas_for_durability(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    await store.open()
    try:
        conn = store._conn
        assert conn is not None
        sync = await store._call(lambda: conn.execute("PRAGMA synchronous").fetchone()[0])
        busy = await store._call(lambda: conn.execute("PRAGMA busy_timeout").fetchone()[0])
    finally:
        await store.close()
    assert sync == 2  # FULL
    assert busy == 5000


async def test_newer_schema_is_refused_and_file_untouched(db_path: Path) -> None:
    async with StateManager.open(db_path) as manager:
        await manager.register("c")
    with sqlite3.connect(db_path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'from the future', '2030-01-01T00:00:00Z')")
    before = _digest(db_path)
    with pytest.raises(InitializationError, match=r"schema version 999, newer than .* not modified"):
        async with StateManager.open(db_path):
            pass
    assert _digest(db_path) == before


async def test_corrupt_file_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.sqlite"
    path.write_bytes(b"this is not a database file at all" * 200)
    before = _digest(path)
    with pytest.raises(InitializationError, match="not a usable SQLite database"):
        async with StateManager.open(path):
            pass
    assert _digest(path) == before


async def test_revisions_never_reused_across_reregistration(manager: StateManager, db_path: Path) -> None:
    first = await manager.register("c", state=ContextState(data={"v": 1}))
    await manager.update("c", data={"v": 2})
    gone = await manager.unregister("c")
    assert gone.revision == 3
    second = await manager.register("c", state=ContextState(data={"v": "new"}))
    assert second.context.revision == 4  # type: ignore[union-attr]
    assert second.context.id != first.context.id  # type: ignore[union-attr]
    await manager.unregister("c", purge=True)
    third = await manager.register("c")
    assert third.context.revision == 6  # type: ignore[union-attr]
    with sqlite3.connect(db_path) as conn:
        sequences = [r[0] for r in conn.execute("SELECT sequence FROM changes ORDER BY sequence")]
    assert sequences == sorted(set(sequences)) and len(sequences) == 6


async def test_sequence_never_decreases_after_reopen(db_path: Path) -> None:
    async with StateManager.open(db_path) as manager:
        await manager.register("c")
        last = (await manager.update("c", data={"a": 1})).change.sequence
    async with StateManager.open(db_path) as manager:
        assert manager.bus.last_sequence == last
        result = await manager.update("c", data={"a": 2})
        assert result.change.sequence == last + 1


async def test_history_snapshots_are_compressed(manager: StateManager, db_path: Path) -> None:
    await manager.register("c", state=ContextState(data={"text": "a" * 10_000}))
    with sqlite3.connect(db_path) as conn:
        size, blob = conn.execute("SELECT size, snapshot FROM history").fetchone()
    assert size > 10_000 and len(blob) < 1_000


async def test_export_import_round_trip(manager: StateManager, tmp_path: Path) -> None:
    await manager.register("a", state=ContextState(data={"n": 1}), metadata={"m": 1}, schema={"type": "object"})
    await manager.update("a", data={"n": 2})
    await manager.register("b")
    await manager.unregister("b")
    exported = [r async for r in manager.store.export_records()]
    target = tmp_path / "copy.sqlite"
    async with StateManager.open(target) as copy:
        assert await copy.store.import_records(exported) == 2
        again = [r async for r in copy.store.export_records()]
        ctx = await copy.get("a")
        assert ctx.revision == 2 and ctx.state.data == {"n": 2} and ctx.schema == {"type": "object"}
        _, _, first = await copy.read("a", 1)
        assert first.data == {"n": 1}
        # A re-registered name continues after the imported high-water mark.
        assert (await copy.register("b")).context.revision == 3  # type: ignore[union-attr]
        with pytest.raises(StateUpdateError, match="not empty"):
            await copy.store.import_records(exported)
    strip = lambda records: [r for r in records if r["type"] != "header"]  # noqa: E731
    assert strip(again) == strip(exported)


async def test_import_rejects_invalid_state_and_writes_nothing(manager: StateManager, tmp_path: Path) -> None:
    await manager.register("a")
    records = [r async for r in manager.store.export_records()]
    for record in records:
        if record["type"] == "context":
            record["state"]["timestamp"] = "yesterday"
    async with StateManager.open(tmp_path / "copy.sqlite") as copy:
        with pytest.raises(
            StateUpdateError, match=r"record 2 \(context\): state/timestamp: 'yesterday' does not match"
        ):
            await copy.store.import_records(records)
        assert (await copy.list()).contexts == []


async def test_backup_is_a_consistent_copy(manager: StateManager, tmp_path: Path) -> None:
    await manager.register("a", state=ContextState(data={"n": 1}))
    destination = tmp_path / "backup.sqlite"
    await manager.store.backup(destination)
    with sqlite3.connect(destination) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT name, revision FROM contexts").fetchall() == [("a", 1)]
    with pytest.raises(StateUpdateError, match="already exists"):
        await manager.store.backup(destination)


async def test_page_corrupted_while_serving_is_a_clear_error(tmp_path: Path) -> None:
    """A table page damaged behind the server's back (start-up's quick_check saw it intact):
    reads say the database is corrupt instead of failing as a bug, and name the file."""
    path = tmp_path / "state.db"
    async with StateManager.open(path) as manager:
        await manager.register("a", state=ContextState(data={"v": 1}))
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            (page_size,) = db.execute("PRAGMA page_size").fetchone()
            (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'contexts'").fetchone()
        db.close()
        with path.open("r+b") as f:
            f.seek((root - 1) * page_size)
            f.write(b"\xff" * page_size)
            f.seek(24)  # the file change counter: the server's connection drops its page cache
            f.write((0x7FFFFFFF).to_bytes(4, "big"))
        with pytest.raises(InitializationError, match="is corrupt") as caught:
            await manager.get("a")
        assert str(path) in str(caught.value)
