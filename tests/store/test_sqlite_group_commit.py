"""Group commit on a real SQLite file (groundhog_mcp/store/sqlite_writer.py).

Writes in flight together share one transaction and one COMMIT (counted by the store, not
timed); each runs in its own SAVEPOINT, so a failing write fails alone and leaves nothing,
and no write is answered before the COMMIT. To make a batch deterministic, the tests hold the
store's one thread until every write is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from groundhog_mcp import ConflictError, ContextState, StateManager, StateUpdateError
from groundhog_mcp.models import dumps
from groundhog_mcp.store import SQLiteStore, StoredContext
from groundhog_mcp.store.base import Mutation, Mutator
from groundhog_mcp.store.sqlite_writer import GroupCommitter
from tests.conformance.test_store import NS, new_context, register, set_data

_T = TypeVar("_T")
N = 12


def _cheap(_: StoredContext) -> bool:
    return True  # the caller's word that a mutation may run inside the transaction


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(db_path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def held(store: SQLiteStore) -> AsyncIterator[None]:
    """Keep the store's thread busy; writes queue meanwhile, and run as one batch after."""
    executor = store._executor
    assert executor is not None
    gate, started = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        gate.wait(10)

    done = executor.submit(hold)
    await asyncio.to_thread(started.wait, 10)
    try:
        yield
    finally:
        gate.set()
        await asyncio.wrap_future(done)


async def batch(store: SQLiteStore, writes: list[Awaitable[_T]]) -> list[_T | BaseException]:
    """Run ``writes`` as one batch: all queued while the thread is held, then released."""
    writer = store._writer
    assert writer is not None
    async with held(store):
        tasks = [asyncio.ensure_future(w) for w in writes]
        for _ in range(100):
            if len(writer._queue) == len(tasks):
                break
            await asyncio.sleep(0)
        assert len(writer._queue) == len(tasks)
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_concurrent_writes_share_one_commit(store: SQLiteStore, db_path: Path) -> None:
    for i in range(N):
        await register(store, f"c{i}", {"n": 0})
    before = store.commit_stats.commits
    writes = [store.mutate(NS, f"c{i}", 1, set_data({"n": i}), actor="t", inline=_cheap) for i in range(N)]
    results = await batch(store, writes)
    assert all(not isinstance(r, BaseException) for r in results), results
    assert store.commit_stats.commits - before == 1  # one COMMIT (one fdatasync) for N writes
    assert store.commit_stats.largest_batch == N
    assert store.commit_stats.savepoints == N  # all queued before the batch began: a savepoint each
    sequences = [r[1].sequence for r in results if not isinstance(r, BaseException)]
    assert sequences == sorted(sequences) and len(set(sequences)) == N  # committed in queue order
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        rows = db.execute("SELECT name, revision, state FROM contexts ORDER BY name").fetchall()
    assert {(name, revision) for name, revision, _ in rows} == {(f"c{i}", 2) for i in range(N)}


async def test_writes_to_one_context_in_one_batch_apply_in_order(store: SQLiteStore) -> None:
    await register(store, "c", {"n": 0})
    writes = [store.mutate(NS, "c", None, set_data({"n": i}), actor="t", inline=_cheap) for i in range(1, 6)]
    results = await batch(store, writes)
    assert [r[0].revision for r in results if not isinstance(r, BaseException)] == [2, 3, 4, 5, 6]
    current = await store.get(NS, "c")
    assert current is not None and current.revision == 6 and current.state.data == {"n": 5}


async def test_a_conflict_fails_only_its_own_write(store: SQLiteStore) -> None:
    await register(store, "c", {"n": 0})
    before = store.commit_stats.commits
    first, stale, third = await batch(
        store,
        [
            store.mutate(NS, "c", 1, set_data({"n": 1}), actor="t", inline=_cheap),
            store.mutate(NS, "c", 1, set_data({"n": "lost"}), actor="t", inline=_cheap),  # read revision 1: conflicts
            store.mutate(NS, "c", 2, set_data({"n": 3}), actor="t", inline=_cheap),
        ],
    )
    assert isinstance(stale, ConflictError) and stale.current_revision == 2
    assert not isinstance(first, BaseException) and first[0].revision == 2
    assert not isinstance(third, BaseException) and third[0].revision == 3
    assert store.commit_stats.commits - before == 1
    history = await store.history(first[0].id, before=None, limit=10)
    assert [h.revision for h in history] == [3, 2, 1]  # nothing of the failed write


def _rows(db_path: Path) -> list[list[tuple[Any, ...]]]:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return [
            db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in ("contexts", "changes", "history", "name_revisions", "events")
        ]


async def test_a_write_alone_needs_no_savepoint_and_its_failure_leaves_nothing(
    store: SQLiteStore, db_path: Path
) -> None:
    """Nothing queued behind it: the write runs without SAVEPOINT/RELEASE; if it fails after
    writing, the transaction (holding only it) is rolled back whole: the file is as it was."""
    await register(store, "c", {"n": 0})
    before, stats = _rows(db_path), store.commit_stats
    commits, savepoints = stats.commits, stats.savepoints

    async def writes_then_fails(tx: Any) -> None:
        await tx.execute("UPDATE contexts SET revision = 99, state = '{}'")
        await tx.execute("DELETE FROM history")
        raise ValueError("the write fails after writing")

    with pytest.raises(ValueError, match="after writing"):
        await store._transaction(writes_then_fails, writing=True)
    with pytest.raises(ConflictError):
        await store.mutate(NS, "c", 7, set_data({"n": "lost"}), actor="t", inline=_cheap)
    assert _rows(db_path) == before  # byte for byte
    stored, _ = await store.mutate(NS, "c", 1, set_data({"n": 1}), actor="t", inline=_cheap)
    assert stored.revision == 2
    assert (stats.commits - commits, stats.savepoints - savepoints) == (1, 0)


async def test_another_namespace_in_the_batch_sees_nothing_of_a_failing_write(store: SQLiteStore) -> None:
    """Tenants share a batch, never a result: b's failure names only b's context, a's write commits."""
    await store.register(new_context("shared", {"secret": "a-data"}, namespace="a"), actor="t", if_exists="error")
    await store.register(new_context("shared", {"secret": "b-data"}, namespace="b"), actor="t", if_exists="error")
    ok, refused, missing = await batch(
        store,
        [
            store.mutate("a", "shared", 1, set_data({"secret": "a-2"}), actor="t", inline=_cheap),
            store.mutate("b", "shared", 7, set_data({"secret": "b-2"}), actor="t", inline=_cheap),
            store.mutate("b", "only-in-a", None, set_data({}), actor="t", inline=_cheap),
        ],
    )
    assert not isinstance(ok, BaseException) and ok[0].namespace == "a" and ok[0].revision == 2
    assert isinstance(refused, ConflictError) and refused.current_revision == 1
    assert "a-data" not in str(refused) and "a-2" not in str(refused)
    assert isinstance(missing, Exception) and "only-in-a" in str(missing)
    b = await store.get("b", "shared")
    assert b is not None and b.revision == 1 and b.state.data == {"secret": "b-data"}


async def test_a_failed_commit_fails_every_write_of_the_batch(store: SQLiteStore) -> None:
    await register(store, "c", {"n": 0})
    conn = store._conn
    assert conn is not None
    # A deferred foreign key the COMMIT refuses: the whole batch, not only the write that broke it.
    await store._call(lambda: conn.execute("PRAGMA foreign_keys=ON"))
    await store._call(
        lambda: conn.executescript(
            "CREATE TABLE parent (id INTEGER PRIMARY KEY);"
            "CREATE TABLE child (p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);"
        )
    )

    async def orphan() -> None:
        await store._transaction(lambda tx: tx.execute("INSERT INTO child VALUES (1)"), writing=True)

    good, bad = await batch(store, [store.mutate(NS, "c", 1, set_data({"n": 1}), actor="t", inline=_cheap), orphan()])
    assert isinstance(good, StateUpdateError) and isinstance(bad, StateUpdateError)
    assert "nothing was written" in str(good)
    current = await store.get(NS, "c")
    assert current is not None and current.revision == 1 and current.state.data == {"n": 0}


def test_batch_bounds_and_savepoint_rollback_on_a_plain_connection(tmp_path: Path) -> None:
    """The writer alone, on a real file: a unit that wrote and then raised leaves nothing; a batch
    stops at max_writes and the rest commit in the next one."""
    conn = sqlite3.connect(tmp_path / "w.sqlite", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (v INTEGER)")
    executor = ThreadPoolExecutor(max_workers=1)
    writer = GroupCommitter(executor, lambda: conn, lambda exc: exc, max_writes=3)
    gate = threading.Event()
    executor.submit(gate.wait, 10)

    def insert(value: int, fail: bool = False) -> Any:
        def unit(c: sqlite3.Connection) -> int:
            c.execute("INSERT INTO t VALUES (?)", (value,))
            if fail:
                raise ValueError(f"unit {value} fails after writing")
            return value

        return unit

    futures = [writer.submit(insert(v, fail=v == 2)) for v in range(1, 8)]
    gate.set()
    outcomes = [f.exception(10) or f.result() for f in futures]
    executor.shutdown(wait=True)
    assert [isinstance(o, ValueError) for o in outcomes] == [False, True, False, False, False, False, False]
    assert sorted(v for (v,) in conn.execute("SELECT v FROM t")) == [1, 3, 4, 5, 6, 7]
    assert writer.stats.commits == 3 and writer.stats.writes == 6  # batches of 3 units: 1-3, 4-6, 7
    conn.close()


async def test_concurrent_updates_through_the_service_share_commits(db_path: Path) -> None:
    """The whole write path (StateManager.update: authorize, prepare, mutate) lets writes batch."""
    async with StateManager.open(db_path) as manager:
        for i in range(N):
            await manager.register(f"c{i}", state=ContextState(data={"n": 0}))
        store = manager.store
        assert isinstance(store, SQLiteStore)
        before = store.commit_stats.commits
        results = await asyncio.gather(*(manager.update(f"c{i}", data={"n": i}, expected_revision=1) for i in range(N)))
        assert [r.context.revision for r in results] == [2] * N
        assert store.commit_stats.writes >= N
        assert store.commit_stats.commits - before < N


def _recording(threads: list[str], data: dict[str, Any]) -> Mutator:
    inner = set_data(data)

    def mutator(current: StoredContext) -> Mutation:
        threads.append(threading.current_thread().name)
        return inner(current)

    return mutator


async def test_cheap_mutations_run_in_the_transaction_costly_ones_before_it(store: SQLiteStore) -> None:
    """A cheap mutation of a small state costs one trip to the database thread; a large state, or a
    mutation the caller does not call cheap (a schema to check, plugin code), is computed in a
    worker thread first, so the database thread (every other request's) is not held meanwhile."""
    big = {"blob": "x" * (SQLiteStore.PREPARE_ABOVE_BYTES + 1)}
    await register(store, "small", {"n": 0})
    await register(store, "large", big)
    cases = [("small", {"n": 1}, True, True), ("small", {"n": 2}, False, False), ("large", big | {"n": 1}, True, False)]
    for name, data, cheap, on_database_thread in cases:
        threads: list[str] = []
        mutator = _recording(threads, data)
        stored, _ = await store.mutate(NS, name, None, mutator, actor="t", inline=lambda _, c=cheap: c)
        assert [t.startswith("groundhog-sqlite") for t in threads] == [on_database_thread], (name, cheap)
        assert stored.state.data == data


async def test_a_large_state_prepared_before_a_concurrent_write_is_mutated_again(store: SQLiteStore) -> None:
    big = {"blob": "y" * (SQLiteStore.PREPARE_ABOVE_BYTES + 1)}
    await register(store, "large", big | {"n": 0})
    threads: list[str] = []
    entered, go = threading.Event(), threading.Event()

    def add_ten(current: StoredContext) -> Mutation:
        threads.append(threading.current_thread().name)
        if len(threads) == 1:
            entered.set()
            go.wait(10)  # meanwhile another write commits revision 2
        return set_data(big | {"n": current.state.data["n"] + 10})(current)

    first = asyncio.ensure_future(store.mutate(NS, "large", None, add_ten, actor="t", inline=lambda _: True))
    await asyncio.to_thread(entered.wait, 10)
    await store.mutate(NS, "large", None, set_data(big | {"n": 1}), actor="t", inline=_cheap)
    go.set()
    stored, _ = await first
    # Prepared on revision 1, committed on revision 2: mutated again, in the transaction.
    assert stored.revision == 3 and stored.state.data["n"] == 11
    assert [t.startswith("groundhog-sqlite") for t in threads] == [False, True]


async def test_a_change_carries_the_size_of_its_diff(store: SQLiteStore) -> None:
    """The store serialises a write's diff once (for the change row); the answer's size check reuses it."""
    await register(store, "c", {"n": 0})
    _, change = await store.mutate(NS, "c", 1, set_data({"n": 1, "text": "é" * 3000}), actor="t", inline=_cheap)
    assert change.patch is not None and change.patch_bytes == len(dumps(change.patch).encode("utf-8"))
