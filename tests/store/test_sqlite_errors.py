"""SQLite errors are classified by SQLite's result code, never by the message text: real locks,
real read-only connections, and a message that says "locked" without being a lock."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from groundhog_mcp import StateManager, StateUpdateError, StoreBusyError
from groundhog_mcp.store import SQLiteStore


@pytest.fixture
async def manager(db_path: Path) -> AsyncGenerator[StateManager]:
    started = StateManager(SQLiteStore(db_path, busy_timeout_ms=100))
    await started.start()
    try:
        await started.register("c")
        await started.update("c", data={"v": 1})
        yield started
    finally:
        await started.close()


def _primary(exc: BaseException | None) -> int:
    assert isinstance(exc, sqlite3.Error), exc
    return exc.sqlite_errorcode & 0xFF


async def test_a_write_lock_held_past_the_busy_timeout_is_busy(manager: StateManager, db_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as holder:
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StoreBusyError) as caught:
            await manager.update("c", data={"v": 2}, expected_revision=2)
        holder.execute("ROLLBACK")
    assert _primary(caught.value.__cause__) == sqlite3.SQLITE_BUSY
    assert (caught.value.code, caught.value.retryable) == ("busy", True)
    assert str(caught.value) == (
        "database: locked by another process for more than busy_timeout=100 ms; nothing was written, retry the call"
    )
    # Nothing was written; once the lock is gone the same call succeeds.
    assert (await manager.get("c")).revision == 2
    assert (await manager.update("c", data={"v": 2}, expected_revision=2)).context.revision == 3


async def test_a_message_that_says_locked_is_not_a_lock(manager: StateManager, db_path: Path) -> None:
    """A trigger (an operator's, say) aborts a write with a message that mentions a lock: it is
    SQLITE_CONSTRAINT, a failed write that a retry will not fix, not a retryable busy error."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON contexts "
            "BEGIN SELECT RAISE(ABORT, 'table is locked for maintenance: busy'); END"
        )
    with pytest.raises(StateUpdateError) as caught:
        await manager.update("c", data={"v": 2}, expected_revision=2)
    assert _primary(caught.value.__cause__) == sqlite3.SQLITE_CONSTRAINT
    assert type(caught.value) is StateUpdateError
    assert (caught.value.code, caught.value.retryable) == ("write_failed", False)
    assert (await manager.get("c")).revision == 2


async def test_a_read_only_connection_is_reported_as_read_only(manager: StateManager, db_path: Path) -> None:
    store = manager.store
    assert isinstance(store, SQLiteStore) and store._conn is not None
    conn = store._conn
    await store._call(lambda: conn.execute("PRAGMA query_only=ON"))  # SQLITE_READONLY on the next write
    with pytest.raises(StateUpdateError) as caught:
        await manager.update("c", data={"v": 2}, expected_revision=2)
    assert _primary(caught.value.__cause__) == sqlite3.SQLITE_READONLY
    assert str(caught.value) == (
        f"database: {db_path} is read-only; nothing was written (check file and directory permissions)"
    )
    await store._call(lambda: conn.execute("PRAGMA query_only=OFF"))
    assert (await manager.get("c")).revision == 2
