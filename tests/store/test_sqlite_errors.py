"""SQLite errors are classified by SQLite's result code, never by the message text (SQLite only;
locks and a message that says "locked" on both backends: tests/conformance/test_error_codes.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from groundhog_mcp import StateManager, StateUpdateError
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
