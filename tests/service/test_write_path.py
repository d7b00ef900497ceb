"""The write hot path (groundhog_mcp/service/updates.py ``update``, store/core.py ``mutate``): an
update with small inputs to a context without schema or state format costs one trip to the
SQLite thread; anything costlier is computed in a worker thread before the transaction."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from groundhog_mcp import ConflictError, ContextState, Event, StateManager, StateUpdateError
from groundhog_mcp.security.audit import AuditKey
from groundhog_mcp.service import WriteResult
from groundhog_mcp.service.audit import verify_audit_chain
from groundhog_mcp.service.validation import SMALL_INPUT_COST, Limits, check_json_inputs, small_json
from groundhog_mcp.store import SQLiteStore
from groundhog_mcp.store.adapter import Tx
from groundhog_mcp.store.base import AuditEntry
from tests.conformance.test_store import NS, register, set_data
from tests.store.test_sqlite_group_commit import batch


def test_small_json_counts_values_and_stops_early() -> None:
    state = {"items": [{"id": i, "text": "x" * 40} for i in range(16)], "n": 1}
    assert small_json(state, None, {"note": "a"})
    assert not small_json({"s": "x" * (64 * SMALL_INPUT_COST)})  # one long string
    assert not small_json(list(range(SMALL_INPUT_COST + 1)))
    assert not small_json({f"k{i}": i for i in range(10**6)})  # refused by its length, not walked
    assert small_json([[[]]] * 10) and not small_json([[[]]] * SMALL_INPUT_COST)


def test_the_checking_walk_tells_small_as_small_json_does() -> None:
    """check_json_inputs with a budget: within it exactly when small_json says so (valid inputs)."""
    cases: list[tuple[Any, ...]] = [
        ({"items": [{"id": i, "text": "x" * 40} for i in range(16)], "n": 1}, None, {"note": "a"}),
        ({"s": "x" * (64 * SMALL_INPUT_COST)},),
        ({"s": "x" * (64 * (SMALL_INPUT_COST - 3))},),
        ({"k" * 64 * (SMALL_INPUT_COST - 2): 1},),
        (list(range(SMALL_INPUT_COST)),),
        (list(range(SMALL_INPUT_COST - 1)),),
        ({f"k{i}": i for i in range(10**6)},),
        ([[[]]] * 10,),
        ([[[]]] * SMALL_INPUT_COST,),
        ({"a": list(range(200))}, {"b": list(range(200))}, [{"op": "add", "path": "/c", "value": 1}] * 30),
    ]
    for values in cases:
        inputs = [(f"f{i}", v) for i, v in enumerate(values)]
        assert check_json_inputs(inputs, Limits(), budget=SMALL_INPUT_COST) == small_json(*values)


class _Walked(dict[str, Any]):
    """A JSON object that counts how often service/validation.py lists its members."""

    walks = 0

    def items(self) -> Any:
        if sys._getframe(1).f_code.co_filename.endswith("validation.py"):
            _Walked.walks += 1
        return super().items()


async def test_an_update_walks_its_inputs_once(db_path: Path) -> None:
    """The size decision (small_json's) and the structural checks (inspect_json's) are one walk."""
    async with StateManager.open(db_path, poll_interval=_NO_POLL) as manager:
        await manager.register("c", state=ContextState(data={"n": 1}))
        _Walked.walks = 0
        patch = _Walked(a=_Walked(b=1), c=[_Walked(d="x")])
        await manager.update("c", merge_patch_=patch, metadata=_Walked(m=1), expected_revision=1)
        assert _Walked.walks == 4  # each object once: two walks would list each twice


_NO_POLL = 3600.0  # the change feed's poll of the file would be one more trip at any moment


class _Trips:
    """Counts what is handed to the store's one database thread."""

    def __init__(self, store: SQLiteStore) -> None:
        executor = store._executor
        assert executor is not None
        self.count = 0
        submit: Callable[..., Any] = executor.submit

        def counted(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return submit(fn, *args, **kwargs)

        executor.submit = counted  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("schema", "data", "trips"),
    [
        (None, {"n": 2}, 1),  # cheap: applied inside the one write transaction
        ({"type": "object"}, {"n": 2}, 2),  # a schema to check: prepared in a worker thread first
        (None, {"n": list(range(SMALL_INPUT_COST + 1))}, 2),  # large input: the same
    ],
)
async def test_trips_to_the_database_thread_per_update(
    db_path: Path, schema: dict[str, Any] | None, data: dict[str, Any], trips: int
) -> None:
    async with StateManager.open(db_path, poll_interval=_NO_POLL) as manager:
        await manager.register("c", state=ContextState(data={"n": 1}), schema=schema)
        store = manager.store
        assert isinstance(store, SQLiteStore)
        counter = _Trips(store)
        result = await manager.update("c", data=data, expected_revision=1)
        assert result.context.revision == 2 and result.context.state.data == data
        assert counter.count == trips


class _Hops:
    """Counts trips to the store's database thread, hops to worker threads (``asyncio.to_thread``,
    the loop's default executor) and callbacks handed back to the event loop from other threads."""

    def __init__(self, store: SQLiteStore) -> None:
        self.trips = _Trips(store)
        self.threads = 0
        self.handoffs = 0
        self.handed: list[str] = []
        self.final = (0, 0)
        loop = asyncio.get_running_loop()
        run_in_executor: Callable[..., Any] = loop.run_in_executor
        call_soon_threadsafe: Callable[..., Any] = loop.call_soon_threadsafe

        def counted_run(executor: Any, fn: Callable[..., Any], *args: Any) -> Any:
            if executor is None:
                self.threads += 1
            return run_in_executor(executor, fn, *args)

        def counted_handoff(callback: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            self.handoffs += 1
            self.handed.append(getattr(callback, "__qualname__", repr(callback)))
            return call_soon_threadsafe(callback, *args, **kwargs)

        loop.run_in_executor = counted_run  # type: ignore[method-assign]
        loop.call_soon_threadsafe = counted_handoff  # type: ignore[method-assign]
        self._restore = (loop, run_in_executor, call_soon_threadsafe)

    def close(self) -> None:
        self.final = (self.trips.count, self.threads)  # what the test's own reads add is not counted
        loop, run_in_executor, call_soon_threadsafe = self._restore
        loop.run_in_executor = run_in_executor  # type: ignore[method-assign]
        loop.call_soon_threadsafe = call_soon_threadsafe  # type: ignore[method-assign]

    @property
    def counts(self) -> tuple[int, int]:
        """(trips to the database thread, worker-thread hops) until :meth:`close`."""
        return self.final


class _Statements:
    """The SQL statements the store's connection runs (its trace callback), in order."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def trace(self, store: SQLiteStore) -> None:
        conn = store._conn
        assert conn is not None
        await store._call(conn.set_trace_callback, self.seen.append)

    def verbs(self) -> list[str]:
        """Each statement the store ran as its first words (``BEGIN IMMEDIATE``, ``INSERT history``,
        ...). A trigger's statements (the full-text index of the state) are traced as ``--`` lines
        and its run as its statement again: those are not statements the store sent."""
        shown: list[str] = []
        sent = [sql for sql in self.seen if not sql.startswith("--")]
        for sql in [s for i, s in enumerate(sent) if i == 0 or s != sent[i - 1]]:
            words = sql.split()
            verb = words[0].upper()
            if verb in ("INSERT", "DELETE"):
                shown.append(f"{verb} {words[2]}")
            elif verb == "UPDATE":
                shown.append(f"UPDATE {words[1]}")
            elif verb == "BEGIN":
                shown.append(" ".join(words[:2]))
            elif verb == "SELECT":
                shown.append(f"SELECT FROM {_outer_from(sql)}")
            else:
                shown.append(verb)
        return shown


def _outer_from(sql: str) -> str:
    """The table a SELECT reads (its FROM outside any parenthesised subquery; when that is a
    subquery itself, the first table named inside)."""
    depth = 0
    for i, char in enumerate(sql):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and sql.startswith(" FROM ", i):
            table = sql[i + 6 :].split()[0]
            if not table.startswith("("):
                return table
    tables = [word for word in re.findall(r"\bFROM\s+(\w+)", sql)]
    return tables[0] if tables else "?"


async def test_an_update_serialises_its_state_once(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The size check's serialisation is the one the store writes (Mutation.text), not a second."""
    async with StateManager.open(db_path, poll_interval=_NO_POLL) as manager:
        await manager.register("c", state=ContextState(data={"n": 1}))
        calls: list[ContextState] = []
        to_json = ContextState.to_json

        def counted(self: ContextState) -> dict[str, Any]:
            calls.append(self)
            return to_json(self)

        monkeypatch.setattr(ContextState, "to_json", counted)
        result = await manager.update("c", data={"n": 2}, expected_revision=1)
        assert len(calls) == 1 and calls[0] is result.context.state
        monkeypatch.undo()
        assert (await manager.read("c"))[2].data == {"n": 2}
        stored = await manager.store.read_revision(result.context.id, 2)
        assert stored is not None and not isinstance(stored, int) and stored.state == result.context.state


async def test_statements_of_one_update(db_path: Path) -> None:
    """One update alone, audit on: no SAVEPOINT for a batch of one write, no name_revisions row
    (a live context's row holds its revision): 8 statements, one COMMIT."""
    manager = StateManager(SQLiteStore(db_path, audit_signer=AuditKey("k" * 32)), poll_interval=_NO_POLL)
    await manager.start()
    try:
        await manager.register("c", state=ContextState(data={"n": 1}))
        store = manager.store
        assert isinstance(store, SQLiteStore)
        statements = _Statements()
        await statements.trace(store)
        await manager.update("c", data={"n": 2}, expected_revision=1)
        assert statements.verbs() == [
            "BEGIN IMMEDIATE",
            "SELECT FROM contexts",
            "UPDATE contexts",
            "INSERT changes",
            "INSERT history",
            "SELECT FROM audit_log",
            "INSERT audit_log",
            "COMMIT",
        ]
        # A conflict alone in its batch: the transaction is rolled back whole, nothing written.
        statements.seen.clear()
        with pytest.raises(ConflictError):
            await manager.update("c", data={"n": 3}, expected_revision=1)
        assert statements.verbs() == ["BEGIN IMMEDIATE", "SELECT FROM contexts", "SELECT FROM history", "ROLLBACK"]
    finally:
        await manager.close()


async def test_the_name_mark_still_moves_on_removal(db_path: Path) -> None:
    """Updates leave name_revisions alone; unregister writes the mark, so a re-registered name
    continues after the last revision the old context had."""
    async with StateManager.open(db_path, poll_interval=_NO_POLL) as manager:
        await manager.register("c", state=ContextState(data={"n": 0}))
        for n in range(1, 4):
            await manager.update("c", data={"n": n})
        removal = await manager.unregister("c")
        assert removal.revision == 5
        again = await manager.register("c", state=ContextState(data={"n": 0}))
        assert isinstance(again, WriteResult) and again.context.revision == 6


@pytest.mark.parametrize("writes", [1, 8])
async def test_writes_of_one_batch_are_answered_in_one_handoff(db_path: Path, writes: int) -> None:
    """The database thread hands a batch's answers to the event loop in one callback, whatever the
    number of writes in it (was: one per write). The store alone: no change feed polling meanwhile."""
    store = SQLiteStore(db_path)
    await store.open()
    try:
        for i in range(writes):
            await register(store, f"c{i}", {"n": 0})
        before = store.commit_stats.commits
        hops = _Hops(store)
        try:
            results = await batch(
                store,
                [
                    store.mutate(NS, f"c{i}", 1, set_data({"n": i}), actor="t", inline=lambda _: True)
                    for i in range(writes)
                ],
            )
        finally:
            hops.close()
        assert [r[0].revision for r in results if not isinstance(r, BaseException)] == [2] * writes
        assert store.commit_stats.commits - before == 1
        # Holding the thread costs two (a worker thread waits for it to start; its end is answered),
        # then one for the batch.
        assert hops.handoffs == 3, hops.handed
    finally:
        await store.close()


def _small_and_plain(n: int) -> dict[str, Any]:
    return {"n": n, "text": "x" * 40}


async def test_rollback_applies_inside_the_write_transaction(db_path: Path) -> None:
    async with StateManager.open(db_path, poll_interval=_NO_POLL) as manager:
        await manager.register("c", state=ContextState(data=_small_and_plain(1)))
        await manager.update("c", data=_small_and_plain(2))
        store = manager.store
        assert isinstance(store, SQLiteStore)
        hops = _Hops(store)
        try:
            result = await manager.rollback("c", 1, expected_revision=2)
        finally:
            hops.close()
        assert result.context.revision == 3 and result.context.state.data == _small_and_plain(1)
        # Reads of the context and of revision 1, then the write: no worker thread, no second trip.
        assert hops.counts == (3, 0)


async def test_an_event_applies_inside_the_write_transaction(db_path: Path) -> None:
    async with StateManager.open(db_path, poll_interval=_NO_POLL) as manager:
        await manager.register(
            "c", state=ContextState(data={"n": 1}), handlers={"bump": {"action": "increment", "path": "/n"}}
        )
        store = manager.store
        assert isinstance(store, SQLiteStore)
        hops = _Hops(store)
        try:
            result = await manager.emit_event("c", Event("bump", {}))
        finally:
            hops.close()
        assert result.revision == 2 and (await manager.get("c")).state.data == {"n": 2}
        # One read of the context, one write (was: two reads, a worker thread, two trips).
        assert hops.counts == (2, 0)


async def test_a_merge_into_a_target_applies_inside_the_write_transaction(db_path: Path) -> None:
    async with StateManager.open(db_path, poll_interval=_NO_POLL) as manager:
        await manager.register("a", state=ContextState(data={"x": 1}))
        await manager.register("t", state=ContextState(data={"y": 2}))
        store = manager.store
        assert isinstance(store, SQLiteStore)
        hops = _Hops(store)
        try:
            outcome = await manager.merge([{"context": "a"}, {"context": "t"}], target="t", expected_revision=1)
        finally:
            hops.close()
        assert outcome.write is not None and outcome.write.context.state.data == {"x": 1, "y": 2}
        trips, threads = hops.counts
        writes = trips - 2  # the two inputs are read first
        assert writes == 1, hops.counts
        assert threads == 1  # the merge itself (one worker thread), not a second one for the write


@pytest.mark.parametrize("schema", [None, {"type": "object"}])
async def test_a_costly_rollback_is_still_prepared_off_the_database_thread(
    db_path: Path, schema: dict[str, Any] | None
) -> None:
    """A large state, or a schema to check: computed in a worker thread first, as before."""
    big = {"items": list(range(SMALL_INPUT_COST + 1))} if schema is None else _small_and_plain(1)
    async with StateManager.open(db_path, poll_interval=_NO_POLL) as manager:
        await manager.register("c", state=ContextState(data=big), schema=schema)
        await manager.update("c", data={"n": 2})
        store = manager.store
        assert isinstance(store, SQLiteStore)
        hops = _Hops(store)
        try:
            result = await manager.rollback("c", 1)
        finally:
            hops.close()
        assert result.context.state.data == big
        trips, threads = hops.counts
        assert trips == 4 and threads == 1  # reads, the write that found it costly, the thread, the write


async def _audited_store(db_path: Path) -> SQLiteStore:
    store = SQLiteStore(db_path, audit_signer=AuditKey("k" * 32))
    await store.open()
    for name in ("a", "b", "c", "d"):
        await register(store, name, {"n": 0})
    await store.append_audit(AuditEntry("t", "other", "note", "ok"))  # another namespace's chain
    return store


async def test_one_audit_head_query_per_namespace_per_batch(db_path: Path) -> None:
    """A batch's writes take their audit chain head from the write before them in the same
    transaction: one head query per namespace in the batch (was: one per write)."""
    store = await _audited_store(db_path)
    try:
        statements = _Statements()
        await statements.trace(store)
        writes = [store.mutate(NS, name, 1, set_data({"n": 1}), actor="t", inline=lambda _: True) for name in "abcd"]
        writes.append(store.append_audit(AuditEntry("t", "other", "note", "ok")))
        results = await batch(store, writes)
        assert not [r for r in results if isinstance(r, BaseException)]
        verbs = statements.verbs()
        assert verbs.count("INSERT audit_log") == 5
        assert verbs.count("SELECT FROM audit_log") == 2, verbs  # NS's chain, then "other"'s
        assert (await verify_audit_chain(store, AuditKey("k" * 32))).problem is None
    finally:
        await store.close()


async def test_a_failed_write_in_a_batch_leaves_no_remembered_audit_head(db_path: Path) -> None:
    """A write that appended its audit row and then failed is rolled back to its savepoint, and
    so is the head it left for the next write of the batch: the chains stay unbroken. A conflict
    in the middle of the batch fails alone too."""
    store = await _audited_store(db_path)
    try:

        async def appended_then_failed(tx: Tx) -> None:
            await store._append_audit(tx, AuditEntry("t", NS, "note", "ok"))
            raise StateUpdateError("failed after its audit row")

        results = await batch(
            store,
            [
                store.mutate(NS, "a", 1, set_data({"n": 1}), actor="t", inline=lambda _: True),
                store._transaction(appended_then_failed, writing=True),
                store.mutate(NS, "b", 1, set_data({"n": 1}), actor="t", inline=lambda _: True),
                store.mutate(NS, "a", 1, set_data({"n": 2}), actor="t", inline=lambda _: True),  # conflict
                store.mutate(NS, "c", 1, set_data({"n": 1}), actor="t", inline=lambda _: True),
            ],
        )
        assert isinstance(results[1], StateUpdateError) and isinstance(results[3], ConflictError)
        assert [isinstance(r, BaseException) for r in results] == [False, True, False, True, False]
        verification = await verify_audit_chain(store, AuditKey("k" * 32))
        assert verification.problem is None
        heads = {h.namespace: h.position for h in await store.audit_heads(None)}
        assert heads[NS] == 4 + 3  # four registrations, three updates: nothing of the failed write
        # Outside a batch nothing is remembered: the next write reads the head again.
        await store.mutate(NS, "d", 1, set_data({"n": 1}), actor="t", inline=lambda _: True)
        assert (await verify_audit_chain(store, AuditKey("k" * 32))).problem is None
    finally:
        await store.close()
