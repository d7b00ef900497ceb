"""Database errors are classified by the database's error code on every backend, never by the
message text: a real lock held past the busy timeout is ``busy``; a trigger's message that says
"locked" is a failed write, not a retryable lock."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from typing import Literal

import anyio
import psycopg
import pytest

from groundhog_mcp import StateManager, StateUpdateError, StoreBusyError

from .conftest import POSTGRES_URL, Backend, MakeBackend

Kind = Literal["sqlite", "postgres"]
KINDS: list[Kind] = ["sqlite", "postgres"]


@contextlib.asynccontextmanager
async def _manager(backend: Backend) -> AsyncIterator[StateManager]:
    manager = StateManager(backend.store(busy_timeout_ms=200))
    await manager.start()
    try:
        await manager.register("c")
        await manager.update("c", data={"v": 1})
        yield manager
    finally:
        await manager.close()


def _database_code(exc: BaseException | None) -> int | str | None:
    """SQLite's primary result code, or PostgreSQL's SQLSTATE."""
    if isinstance(exc, sqlite3.Error):
        return exc.sqlite_errorcode & 0xFF
    assert isinstance(exc, psycopg.Error), exc
    return exc.sqlstate


@pytest.mark.parametrize("kind", KINDS)
async def test_a_lock_held_past_the_busy_timeout_is_busy(kind: Kind, make_backend: MakeBackend) -> None:
    backend = await make_backend(kind)
    async with _manager(backend) as manager:
        if backend.path is not None:
            with contextlib.closing(sqlite3.connect(backend.path, isolation_level=None)) as holder:
                holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
                with anyio.fail_after(10), pytest.raises(StoreBusyError) as caught:
                    await manager.update("c", data={"v": 2}, expected_revision=2)
                holder.execute("ROLLBACK")
            expected: int | str = sqlite3.SQLITE_BUSY
        else:
            async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as holder:
                await holder.execute(f'SELECT 1 FROM "{backend.pg_schema}".contexts FOR UPDATE')
                with anyio.fail_after(10), pytest.raises(StoreBusyError) as caught:
                    await manager.update("c", data={"v": 2}, expected_revision=2)
                await holder.rollback()
            expected = "55P03"  # lock_not_available
        assert _database_code(caught.value.__cause__) == expected
        assert (caught.value.code, caught.value.retryable) == ("busy", True)
        assert "busy_timeout=200 ms; nothing was written" in str(caught.value)
        # Nothing was written; with the lock gone the same call succeeds.
        assert (await manager.get("c")).revision == 2
        assert (await manager.update("c", data={"v": 2}, expected_revision=2)).context.revision == 3


@pytest.mark.parametrize("kind", KINDS)
async def test_a_message_that_says_locked_is_not_a_lock(kind: Kind, make_backend: MakeBackend) -> None:
    """A trigger (an operator's, say) refuses a write with a message about a lock: a failed write
    that a retry will not fix, not a retryable busy error."""
    backend = await make_backend(kind)
    async with _manager(backend) as manager:
        message = "database is locked for maintenance (busy)"
        if backend.path is not None:
            await backend.sql(
                f"CREATE TRIGGER refuse BEFORE UPDATE ON contexts BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )
            expected: int | str = sqlite3.SQLITE_CONSTRAINT
        else:
            await backend.sql(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN RAISE EXCEPTION '{message}'; END $$"
            )
            await backend.sql("CREATE TRIGGER refuse BEFORE UPDATE ON contexts FOR EACH ROW EXECUTE FUNCTION refuse()")
            expected = "P0001"  # raise_exception
        with pytest.raises(StateUpdateError) as caught:
            await manager.update("c", data={"v": 2}, expected_revision=2)
        assert _database_code(caught.value.__cause__) == expected
        assert type(caught.value) is StateUpdateError
        assert (caught.value.code, caught.value.retryable) == ("write_failed", False)
        assert (await manager.get("c")).revision == 2
