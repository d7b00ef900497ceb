"""PostgreSQL: no store-wide lock on the write path, and a change feed that stays exactly-once and
in order although sequences commit out of order (store/pg_feed.py), in round trips counted.

A write "held open" is a real write of a real store, stopped where it writes its change (it holds
its sequence, reserved with its locked row's read, and before schema 6 it held the store_counter
row lock) until the test releases it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import psycopg
import pytest
from mcp import Client
from psycopg import sql

from groundhog_mcp import ContextState, StateManager, StoreBusyError
from groundhog_mcp.app import Settings, create_server, open_manager
from groundhog_mcp.errors import ConflictError, LeasedError
from groundhog_mcp.models import Change
from groundhog_mcp.service.audit import verify_audit_chain
from groundhog_mcp.store.adapter import AuditHead, ChangeWrite, Tx
from groundhog_mcp.store.base import AuditQuery, Mutation, NewContext, Retention, StoredContext
from groundhog_mcp.store.migrations import MIGRATIONS
from groundhog_mcp.store.postgres import PostgresStore
from groundhog_mcp.store.rows import AuditRecord
from tests.conformance.conftest import POSTGRES_URL, MakeBackend, make_backend
from tests.security.test_audit import KEY, KEY_TEXT
from tests.server.conftest import call

__all__ = ["make_backend"]  # the fixture

BOUND_S = 30.0  # a hang guard, never a timing assertion
_T = TypeVar("_T")


class HeldStore(PostgresStore):
    """A store whose next write in ``namespace`` stops where it writes its change."""

    def __init__(self, url: str, namespace: str, **kwargs: Any) -> None:
        super().__init__(url, retention=Retention(keep_revisions=0), **kwargs)
        self.url = url
        self.namespace = namespace
        self.armed = False
        self.fail = False
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def _append_change(self, tx: Tx, write: ChangeWrite) -> tuple[int, AuditHead | None]:
        appended = await super()._append_change(tx, write)
        if self.armed and write.namespace == self.namespace:
            self.armed = False
            self.reached.set()
            await self.release.wait()
            if self.fail:
                raise RuntimeError("the write fails after taking its sequence")
        return appended


def new_context(namespace: str, name: str) -> NewContext:
    return NewContext(uuid.uuid4(), namespace, name, "1.0.0", {}, {}, None, {}, ContextState(data={"n": 0}))


def bump(current: StoredContext) -> Mutation:
    return Mutation(ContextState(data={"n": current.state.data["n"] + 1}), [], "update")


def broken(current: StoredContext) -> Mutation:
    raise ZeroDivisionError("a mutator that fails")


@pytest.fixture
async def stores(make_backend: MakeBackend) -> AsyncIterator[tuple[HeldStore, PostgresStore]]:
    """Two instances on one fresh schema: ``held`` (writes in namespace x can be held open) and
    ``other``; context ``a`` in x and ``b`` in y exist."""
    backend = await make_backend("postgres")
    held = HeldStore(backend.database, "x", busy_timeout_ms=1000)
    other = PostgresStore(backend.database, busy_timeout_ms=1000, retention=Retention(keep_revisions=0))
    await held.open()
    await other.open()
    try:
        await held.register(new_context("x", "a"), actor="t", if_exists="error")
        await other.register(new_context("y", "b"), actor="t", if_exists="error")
        yield held, other
    finally:
        held.release.set()
        await held.close()
        await other.close()


async def hold_write_in_x(held: HeldStore) -> asyncio.Task[tuple[StoredContext, Change]]:
    held.armed = True
    write = asyncio.create_task(held.mutate("x", "a", None, bump, actor="t"))
    async with asyncio.timeout(BOUND_S):
        await held.reached.wait()
    return write


async def test_a_write_in_another_namespace_commits_while_one_is_held_open(
    stores: tuple[HeldStore, PostgresStore],
) -> None:
    held, other = stores
    x = await hold_write_in_x(held)
    # Before schema 6 this waited for x's store_counter row lock and failed after busy_timeout.
    _, y = await other.mutate("y", "b", None, bump, actor="t")
    assert not x.done()
    held.release.set()
    _, x_change = await x
    assert (x_change.namespace, y.namespace) == ("x", "y")
    assert x_change.sequence == y.sequence - 1  # x took its number first and committed last


async def test_an_audited_write_in_another_namespace_commits_while_one_is_held_open(
    make_backend: MakeBackend,
) -> None:
    """With the audit log on, the held write holds its namespace's audit chain head (taken in its
    change statement) until it commits. Before schema 10 that was the one head of every
    namespace: y's write waited for it and failed after busy_timeout."""
    backend = await make_backend("postgres")
    held = HeldStore(backend.database, "x", busy_timeout_ms=1000, audit_signer=KEY)
    other = PostgresStore(
        backend.database, busy_timeout_ms=1000, retention=Retention(keep_revisions=0), audit_signer=KEY
    )
    await held.open()
    await other.open()
    try:
        await held.register(new_context("x", "a"), actor="t", if_exists="error")
        await held.register(new_context("x", "a2"), actor="t", if_exists="error")
        await other.register(new_context("y", "b"), actor="t", if_exists="error")
        x = await hold_write_in_x(held)
        _, y = await other.mutate("y", "b", None, bump, actor="t")
        assert not x.done()
        # Within x the chain still has one writer at a time: no fork of x's chain.
        with pytest.raises(StoreBusyError, match="locked by another writer"):
            await other.mutate("x", "a2", None, bump, actor="t")
        held.release.set()
        _, x_change = await x
        rows: list[AuditRecord] = await other.read_audit(AuditQuery(limit=100))
    finally:
        held.release.set()
        await held.close()
        await other.close()
    # In log order: x's row took its numbers first (change 4, audit row 4) and committed last.
    assert [(r.sequence, r.namespace, r.position, r.change_sequence) for r in rows] == [
        (1, "x", 1, 1),
        (2, "x", 2, 2),
        (3, "y", 1, 3),
        (4, "x", 3, x_change.sequence),
        (5, "y", 2, y.sequence),
    ]
    assert x_change.sequence == y.sequence - 1


async def test_the_feed_holds_a_later_change_back_until_the_earlier_one_commits(
    stores: tuple[HeldStore, PostgresStore],
) -> None:
    held, other = stores
    start = await other.last_sequence()
    x = await hold_write_in_x(held)
    _, y = await other.mutate("y", "b", None, bump, actor="t")
    # y is committed and visible, but x's earlier number is in flight: nothing after `start` is
    # final, so a reader waits for x (here: longer than its busy_timeout) rather than skip it.
    with pytest.raises(StoreBusyError, match="writes in flight"):
        await other.changes_after(start, limit=10)
    with pytest.raises(StoreBusyError, match="writes in flight"):
        await other.last_sequence()
    held.release.set()
    await x
    assert [(c.sequence, c.namespace) for c in await other.changes_after(start, limit=10)] == [
        (y.sequence - 1, "x"),
        (y.sequence, "y"),
    ]
    assert await other.last_sequence() == y.sequence


async def test_a_number_rolled_back_after_nextval_is_a_gap_the_feed_moves_past(
    stores: tuple[HeldStore, PostgresStore],
) -> None:
    held, other = stores
    start = await other.last_sequence()
    held.fail = True
    x = await hold_write_in_x(held)
    _, y = await other.mutate("y", "b", None, bump, actor="t")
    held.release.set()
    with pytest.raises(RuntimeError, match="after taking its sequence"):
        await x
    assert [c.sequence for c in await other.changes_after(start, limit=10)] == [y.sequence]
    assert y.sequence == start + 2  # start + 1 was x's, rolled back
    assert await other.last_sequence() == y.sequence
    a = await held.get("x", "a")
    assert a is not None and a.revision == 1


async def test_a_follower_instance_publishes_out_of_order_commits_once_in_sequence_order(
    stores: tuple[HeldStore, PostgresStore],
) -> None:
    held, other = stores
    follower = StateManager(PostgresStore(held.url, retention=Retention(keep_revisions=0)))
    await follower.start()
    subscription = follower.bus.subscribe()
    try:
        x = await hold_write_in_x(held)
        _, y = await other.mutate("y", "b", None, bump, actor="t")
        _, y2 = await other.mutate("y", "b", None, bump, actor="t")
        held.release.set()
        _, x_change = await x
        published: list[tuple[int, str]] = []
        async with asyncio.timeout(BOUND_S):
            while len(published) < 3:
                item = await subscription.get()
                assert isinstance(item, Change)
                published.append((item.sequence, item.namespace))
        assert published == [(x_change.sequence, "x"), (y.sequence, "y"), (y2.sequence, "y")]
    finally:
        subscription.close()
        await follower.close()


async def round_trips(store: PostgresStore, call: Awaitable[_T]) -> tuple[_T, int]:
    before = store.round_trips
    result = await call
    return result, store.round_trips - before


@pytest.mark.parametrize("audited", [False, True], ids=["audit-off", "audit-on"])
async def test_a_read_is_one_round_trip_and_an_update_or_unregister_two(
    make_backend: MakeBackend, audited: bool
) -> None:
    """An update: lock, reserve (sequence, audit head) and read the row | the state, the change
    statement, the audit row and COMMIT (before: 3, the audit row and COMMIT after the change
    statement's answer). A write that fails its expected_revision reserves nothing."""
    backend = await make_backend("postgres")
    store = PostgresStore(
        backend.database, retention=Retention(keep_revisions=0), audit_signer=KEY if audited else None
    )
    await store.open()
    try:
        _, registered = await store.register(new_context("x", "a"), actor="t", if_exists="error")
        assert registered is not None
        read = (await round_trips(store, store.get("x", "a")))[1]
        (_, updated), update = await round_trips(store, store.mutate("x", "a", 1, bump, actor="t"))
        with pytest.raises(ConflictError):
            await store.mutate("x", "a", 1, bump, actor="t")
        removed, unregister = await round_trips(store, store.unregister("x", "a", 2, purge=False, actor="t"))
        audit = await store.read_audit(AuditQuery(limit=10))
        verified = await verify_audit_chain(store, KEY)
    finally:
        await store.close()
    assert (read, update, unregister) == (1, 2, 2)
    # Consecutive: the conflict took no number.
    assert [registered.sequence, updated.sequence, removed.sequence] == [1, 2, 3]
    if audited:
        assert [(r.sequence, r.position, r.operation, r.change_sequence) for r in audit] == [
            (1, 1, "register", 1),
            (2, 2, "update", 2),
            (3, 3, "unregister", 3),
        ]
        assert (verified.problem, verified.rows) == (None, 3)
    else:
        assert audit == []


async def test_a_write_after_another_instance_wrote_is_three_round_trips_on_the_current_state(
    make_backend: MakeBackend,
) -> None:
    """This store's guess (the context as it last wrote it) is stale: nothing is reserved, the
    mutator runs again on the current state, and the numbers are taken with the change."""
    backend = await make_backend("postgres")
    one = PostgresStore(backend.database, retention=Retention(keep_revisions=0), audit_signer=KEY)
    other = PostgresStore(backend.database, retention=Retention(keep_revisions=0), audit_signer=KEY)
    await one.open()
    await other.open()
    try:
        await one.register(new_context("x", "a"), actor="t", if_exists="error")
        (_, first), warm = await round_trips(one, one.mutate("x", "a", None, bump, actor="t"))
        await other.mutate("x", "a", None, bump, actor="t")
        (stored, last), stale = await round_trips(one, one.mutate("x", "a", None, bump, actor="t"))
        verified = await verify_audit_chain(one, KEY)
    finally:
        await one.close()
        await other.close()
    assert (warm, stale) == (2, 3)
    assert (stored.revision, stored.state.data) == (4, {"n": 3})
    assert last.sequence == first.sequence + 2
    assert (verified.problem, verified.rows) == (None, 4)


async def test_a_guess_never_crosses_namespaces(make_backend: MakeBackend) -> None:
    """Two namespaces each hold a context named ``a``; writes alternate between them. The store's
    guess (the context as it last wrote it) is kept per namespace: every update runs its mutator
    only on its own namespace's state, and each, after the first, is two round trips."""
    backend = await make_backend("postgres")
    store = PostgresStore(backend.database, retention=Retention(keep_revisions=0), audit_signer=KEY)
    seen: dict[str, list[str]] = {"x": [], "y": []}

    def bump_own(namespace: str) -> Callable[[StoredContext], Mutation]:
        def mutate(current: StoredContext) -> Mutation:
            data = current.state.data
            seen[namespace].append(data["owner"])
            return Mutation(ContextState(data={"owner": data["owner"], "n": data["n"] + 1}), [], "update")

        return mutate

    await store.open()
    try:
        for namespace in ("x", "y"):
            context = dataclasses.replace(
                new_context(namespace, "a"), state=ContextState(data={"owner": namespace, "n": 0})
            )
            await store.register(context, actor="t", if_exists="error")
        trips: dict[str, list[int]] = {"x": [], "y": []}
        for _ in range(3):
            for namespace in ("x", "y"):
                _, count = await round_trips(store, store.mutate(namespace, "a", None, bump_own(namespace), actor="t"))
                trips[namespace].append(count)
        states = {namespace: (await store.get(namespace, "a")).state.data for namespace in ("x", "y")}
    finally:
        await store.close()
    assert seen == {"x": ["x"] * 3, "y": ["y"] * 3}
    assert trips == {"x": [2, 2, 2], "y": [2, 2, 2]}
    assert states == {"x": {"owner": "x", "n": 3}, "y": {"owner": "y", "n": 3}}


async def test_a_write_refused_by_its_lease_or_its_mutator_takes_no_number(make_backend: MakeBackend) -> None:
    backend = await make_backend("postgres")
    store = PostgresStore(backend.database, retention=Retention(keep_revisions=0), audit_signer=KEY)
    await store.open()
    try:
        await store.register(new_context("x", "a"), actor="t", if_exists="error")
        _, before = await store.mutate("x", "a", None, bump, actor="t")
        grant = await store.lease("x", "a", "take", token=None, holder="h", ttl_seconds=60, actor="t")
        with pytest.raises(LeasedError):
            await store.mutate("x", "a", None, bump, actor="t")  # no token
        with pytest.raises(LeasedError):
            await store.mutate("x", "a", None, bump, actor="t", lease_token=grant.lease.token + 1)
        with pytest.raises(ZeroDivisionError):
            await store.mutate("x", "a", None, broken, actor="t", lease_token=grant.lease.token)
        (_, after), trips = await round_trips(
            store, store.mutate("x", "a", None, bump, actor="t", lease_token=grant.lease.token)
        )
        audit = await store.read_audit(AuditQuery(limit=10, newest_first=True))
    finally:
        await store.close()
    # register, update, the lease's take, the update: consecutive numbers, no gap.
    assert after.sequence == before.sequence + 2
    assert [r.sequence for r in audit] == [4, 3, 2, 1]
    assert trips == 2  # a lease action is no revision: the store's guess still holds


async def test_an_update_state_call_is_two_round_trips_with_the_audit_log_on(make_backend: MakeBackend) -> None:
    """Through the MCP tool: the service adds no read of its own."""
    backend = await make_backend("postgres")
    settings = Settings(database=backend.database, audit_key=KEY_TEXT)  # pyright: ignore[reportArgumentType]
    manager = open_manager(settings)
    await manager.start()
    store = manager.store
    assert isinstance(store, PostgresStore) and store.audit_signer is not None
    try:
        async with Client(create_server(settings, manager)) as client:
            await call(client, "register_context", name="a", state={"data": {"n": 0}})
            counts: list[int] = []
            for n in range(1, 4):
                before = store.round_trips
                await call(client, "update_state", name="a", data={"n": n}, expected_revision=n)
                counts.append(store.round_trips - before)
    finally:
        await manager.close()
    assert counts == [2, 2, 2]


async def test_schema_6_continues_the_sequence_of_a_schema_5_database(make_backend: MakeBackend) -> None:
    backend = await make_backend("postgres")
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        schema = sql.Identifier(backend.pg_schema or "")
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        await conn.execute(sql.SQL("SET search_path TO {}").format(schema))
        await conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL)"
        )
        for migration in MIGRATIONS[:5]:
            await conn.execute(migration.postgres)
            await conn.execute(
                "INSERT INTO schema_migrations VALUES (%s, %s, now())", (migration.version, migration.name)
            )
        await conn.execute("UPDATE store_counter SET value = 41")  # 41 changes so far
    unmigrated = PostgresStore(backend.database, auto_migrate=False)  # as `audit verify` opens it
    await unmigrated.open()
    try:
        assert await unmigrated.last_sequence() == 41
    finally:
        await unmigrated.close()
    store = PostgresStore(backend.database)
    await store.open()
    try:
        _, change = await store.register(new_context("x", "a"), actor="t", if_exists="error")
        assert change is not None and change.sequence == 42
        assert await store.last_sequence() == 42
    finally:
        await store.close()
    assert await backend.sql("SELECT to_regclass('store_counter') IS NULL, max(version) FROM schema_migrations") == [
        (True, MIGRATIONS[-1].version)  # 6 and every later migration applied
    ]


async def test_concurrent_writers_in_many_namespaces_reach_a_follower_once_each_in_order(
    make_backend: MakeBackend,
) -> None:
    backend = await make_backend("postgres")
    writers = [PostgresStore(backend.database, retention=Retention(keep_revisions=0)) for _ in range(4)]
    follower = StateManager(PostgresStore(backend.database, retention=Retention(keep_revisions=0)))
    for store in writers:
        await store.open()
    await follower.start()
    subscription = follower.bus.subscribe(maxsize=10_000)
    committed: list[int] = []
    try:

        async def write(store: PostgresStore, namespace: str) -> None:
            for name in ("a", "b"):
                _, change = await store.register(new_context(namespace, name), actor="t", if_exists="error")
                assert change is not None
                committed.append(change.sequence)
            for i in range(30):
                _, change = await store.mutate(namespace, "ab"[i % 2], None, bump, actor="t")
                committed.append(change.sequence)

        await asyncio.gather(*(write(store, f"ns{k}") for k, store in enumerate(writers)))
        published: list[int] = []
        async with asyncio.timeout(BOUND_S):
            while len(published) < len(committed):
                item = await subscription.get()
                assert isinstance(item, Change)
                published.append(item.sequence)
        assert published == sorted(committed)
    finally:
        subscription.close()
        await follower.close()
        for store in writers:
            await store.close()


async def test_a_write_that_waited_for_the_lock_sees_the_lease_taken_meanwhile(make_backend: MakeBackend) -> None:
    """READ COMMITTED reads other tables as of a statement's start: a write whose locking statement
    waited while a newer lease was taken read the old lease and passed the fence with the older
    token (seen as stale writes in tests/e2e/test_lease_model.py, about 1 run in 4)."""
    backend = await make_backend("postgres")
    store = PostgresStore(backend.database)
    await store.open()
    try:
        await store.register(new_context("x", "a"), actor="t", if_exists="error")
        context = await store.get("x", "a")
        assert context is not None
        grant = await store.lease("x", "a", "take", token=None, holder="old", ttl_seconds=60, actor="t")
        assert grant.lease.token == 1
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
            await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(backend.pg_schema or "")))
            # Another instance's lease action in flight: it holds the context row's lock...
            await conn.execute("SELECT 1 FROM contexts WHERE id = %s FOR UPDATE", (context.id,))
            write = asyncio.create_task(store.mutate("x", "a", None, bump, actor="t", lease_token=1))
            await _until_a_backend_waits_for_a_lock(conn)  # the write is waiting for the row
            assert not write.done()
            # ...and issues token 2 to another holder, then commits.
            await conn.execute("UPDATE leases SET token = 2, holder = 'new' WHERE context_id = %s", (context.id,))
            await conn.commit()
        with pytest.raises(LeasedError):
            await write
        current = await store.get("x", "a")
        assert current is not None and current.revision == context.revision
    finally:
        await store.close()


async def _until_a_backend_waits_for_a_lock(conn: psycopg.AsyncConnection[Any]) -> None:
    """Poll (at most 10 s) until another session of this database waits for a lock."""
    async with asyncio.timeout(10):
        while True:
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            row = await cursor.fetchone()
            if row is not None and row[0] > 0:
                return
            await asyncio.sleep(0.01)
