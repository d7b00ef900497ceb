"""What only the PostgreSQL backend has: URLs, the optional dependency, lost connections, bounded waits.

(Backend-specific, so not part of the parametrized contract; it lives here to share the
fixtures. Its natural home is ``tests/store/test_postgres.py``.)
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from groundhog_mcp import ContextState, InitializationError, StateManager, StateUpdateError, StoreBusyError
from groundhog_mcp.models import DEFAULT_NAMESPACE as NS
from groundhog_mcp.store import open_store
from groundhog_mcp.store.base import ChangeAnnouncer, Mutation, NewContext, StoredContext
from groundhog_mcp.store.postgres import PostgresStore

from .conftest import POSTGRES_URL, MakeBackend


def new_context(name: str) -> NewContext:
    return NewContext(uuid.uuid4(), NS, name, "1.0.0", {}, {}, None, {}, ContextState(data={"n": 0}))


def bump(current: StoredContext) -> Mutation:
    return Mutation(ContextState(data={"n": current.state.data["n"] + 1}), [], "update")


def test_open_store_selects_postgres_and_never_shows_the_password() -> None:
    store = open_store("postgresql://ann:s3cret@db.example:5433/prod?schema=groundhog&sslmode=disable")
    assert isinstance(store, PostgresStore) and store.backend == "postgres"
    assert store.pg_schema == "groundhog"
    assert store.location == "postgresql://ann@db.example:5433/prod?schema=groundhog"
    assert "s3cret" not in store.location
    assert isinstance(open_store("postgres://localhost/db"), PostgresStore)


def test_a_schema_name_must_be_a_plain_identifier() -> None:
    with pytest.raises(InitializationError, match="not a plain PostgreSQL identifier"):
        PostgresStore("postgresql://localhost/db?schema=a;drop")


@pytest.mark.parametrize("url", ["postgresql://[::1/db", "postgresql://localhost/db?no_such_option=1"])
def test_a_bad_url_is_a_clear_initialization_error(url: str) -> None:
    with pytest.raises(InitializationError, match=r"not a usable PostgreSQL connection string \(.+\)$"):
        PostgresStore(url)


def test_without_psycopg_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.delitem(sys.modules, "groundhog_mcp.store.postgres")
    with pytest.raises(InitializationError, match=r"install groundhog-context-mcp\[postgres\]"):
        open_store("postgresql://localhost/db")


async def test_an_unreachable_server_fails_fast_with_a_clear_error() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test")
    with anyio.fail_after(10), pytest.raises(InitializationError, match=r"cannot connect to PostgreSQL at .*:1/test"):
        await store.open()
    with pytest.raises(InitializationError, match="not open"):
        await store.get(NS, "c")


async def test_lost_connections_are_replaced_and_nothing_is_lost(make_backend: MakeBackend) -> None:
    backend = await make_backend("postgres")
    app = f"gh_test_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(f"{POSTGRES_URL}?application_name={app}", pg_schema=backend.pg_schema, pool_min_size=2)
    await store.open()
    try:
        await store.register(new_context("c"), actor="t", if_exists="error")
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as admin:
            cur = await admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s", (app,)
            )
            row = await cur.fetchone()
            assert row is not None and row[0] >= 1
        with anyio.fail_after(15):
            got = await store.get(NS, "c")
            assert got is not None and got.revision == 1
            stored, _ = await store.mutate(NS, "c", 1, bump, actor="t")
        assert stored.revision == 2
        assert [c.revision for c in await store.changes_after(0, limit=10)] == [1, 2]
    finally:
        await store.close()


async def test_a_lock_wait_is_bounded_by_busy_timeout(make_backend: MakeBackend) -> None:
    backend = await make_backend("postgres")
    store = PostgresStore(POSTGRES_URL, pg_schema=backend.pg_schema, busy_timeout_ms=200)
    await store.open()
    try:
        await store.register(new_context("c"), actor="t", if_exists="error")
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as holder:
            await holder.execute(f'SELECT 1 FROM "{backend.pg_schema}".contexts FOR UPDATE')
            with anyio.fail_after(10), pytest.raises(StoreBusyError, match="busy_timeout=200 ms; nothing was written"):
                await store.mutate(NS, "c", 1, bump, actor="t")
            await holder.rollback()
        stored, _ = await store.mutate(NS, "c", 1, bump, actor="t")
        assert stored.revision == 2
    finally:
        await store.close()


async def test_a_wait_for_a_pooled_connection_is_bounded(make_backend: MakeBackend) -> None:
    backend = await make_backend("postgres")
    store = PostgresStore(
        POSTGRES_URL, pg_schema=backend.pg_schema, pool_min_size=1, pool_max_size=1, pool_timeout_s=0.5
    )
    await store.open()
    release = threading.Event()

    def slow(current: StoredContext) -> Mutation:
        release.wait(10)
        return bump(current)

    try:
        # Registered by another instance: `store` has no guess of the context, so the mutator
        # runs in the transaction, holding the one pooled connection (store/pg_change.py).
        registrar = PostgresStore(POSTGRES_URL, pg_schema=backend.pg_schema)
        await registrar.open()
        try:
            await registrar.register(new_context("c"), actor="t", if_exists="error")
        finally:
            await registrar.close()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: store.mutate(NS, "c", None, slow, actor="t"))
            await anyio.sleep(0.1)
            with anyio.fail_after(10), pytest.raises(StoreBusyError, match=r"within pool_timeout=0.5 s"):
                await store.get(NS, "c")
            release.set()
        got = await store.get(NS, "c")
        assert got is not None and got.revision == 2
    finally:
        release.set()
        await store.close()


async def test_backup_is_a_restorable_consistent_export(make_backend: MakeBackend, tmp_path: Path) -> None:
    source, target = await make_backend("postgres"), await make_backend("postgres")
    store = source.store()
    await store.open()
    try:
        await store.register(new_context("c"), actor="t", if_exists="error")
        await store.mutate(NS, "c", None, bump, actor="t")
        destination = tmp_path / "backup.jsonl"
        await store.backup(destination)
        with pytest.raises(StateUpdateError, match="already exists"):
            await store.backup(destination)
        records = [json.loads(line) for line in destination.read_text().splitlines()]
        copy = target.store()
        await copy.open()
        try:
            assert await copy.import_records(records) == 1
            assert await copy.get(NS, "c") == await store.get(NS, "c")
        finally:
            await copy.close()
    finally:
        await store.close()


# -- announcements: LISTEN / NOTIFY across instances ------------------------------------------


async def terminate(application_name: str) -> int:
    """``pg_terminate_backend`` every connection of one store (its pool and its LISTEN session)."""
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as admin:
        cur = await admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def next_change(subscription: Any) -> Any:
    with anyio.fail_after(15):
        return await subscription.get()


def deaf_manager(store: PostgresStore) -> StateManager:
    """A manager whose feed would poll only once a minute: what it publishes sooner was announced."""
    manager = StateManager(store, poll_interval=60)
    manager.feed.announced_interval = 60
    return manager


async def test_a_commit_by_another_instance_is_announced(make_backend: MakeBackend) -> None:
    backend = await make_backend("postgres")
    listener = deaf_manager(PostgresStore(backend.database))
    writer = StateManager(backend.store())
    await listener.start()
    await writer.start()
    try:
        assert isinstance(listener.store, ChangeAnnouncer) and listener.store.announcing
        subscription = listener.bus.subscribe()
        await writer.register("c", state=ContextState(data={"n": 0}))
        assert (await next_change(subscription)).revision == 1
        await writer.update("c", data={"n": 1})
        assert (await next_change(subscription)).revision == 2
    finally:
        await writer.close()
        await listener.close()


async def test_the_listen_session_comes_back_after_it_is_terminated(make_backend: MakeBackend) -> None:
    backend = await make_backend("postgres")
    app = f"gh_test_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(f"{POSTGRES_URL}?application_name={app}", pg_schema=backend.pg_schema)
    listener = deaf_manager(store)
    writer = StateManager(backend.store())
    await listener.start()
    await writer.start()
    try:
        subscription = listener.bus.subscribe()
        await writer.register("c", state=ContextState(data={"n": 0}))
        assert (await next_change(subscription)).revision == 1
        assert await terminate(app) >= 2  # the pool's connection and the LISTEN session
        # Written while the session may still be down: the reconnection announces "read now".
        await writer.update("c", data={"n": 1})
        assert (await next_change(subscription)).revision == 2
        seen = 0
        with anyio.fail_after(15):
            while not store.announcing:  # a new session announces itself
                seen = await store.wait_for_changes(seen)
        await writer.update("c", data={"n": 2})
        assert (await next_change(subscription)).revision == 3
        got = await listener.get("c")
        assert got.revision == 3
    finally:
        await writer.close()
        await listener.close()


async def test_without_a_listen_session_the_feed_polls(make_backend: MakeBackend) -> None:
    backend = await make_backend("postgres")
    unreachable = "postgresql://postgres@127.0.0.1:1/test"
    store = open_store(f"{backend.database}&listen_url={unreachable}")
    assert isinstance(store, PostgresStore) and store.listen_location == "postgresql://postgres@127.0.0.1:1/test"
    listener = StateManager(store)
    writer = StateManager(backend.store())
    with anyio.fail_after(10):
        await listener.start()
    await writer.start()
    try:
        assert not store.announcing
        subscription = listener.bus.subscribe()
        await writer.register("c")
        assert (await next_change(subscription)).revision == 1
    finally:
        await writer.close()
        await listener.close()


def test_listen_url_is_our_parameter_and_may_carry_its_own() -> None:
    store = PostgresStore(
        "postgresql://app@bouncer:6432/prod?schema=g&sslmode=disable"
        "&listen_url=postgresql%3A%2F%2Fapp%40primary%3A5432%2Fprod%3Fsslmode%3Drequire"
    )
    assert store.location == "postgresql://app@bouncer:6432/prod?schema=g"
    assert store.listen_location == "postgresql://app@primary:5432/prod"
    default = PostgresStore("postgresql://app:pw@db/prod?schema=g")
    assert default.listen_location == "postgresql://app@db/prod"
    explicit = PostgresStore("postgresql://app@db/prod", listen_url="postgresql://app@other/prod")
    assert explicit.listen_location == "postgresql://app@other/prod"


def test_the_pool_size_is_a_url_parameter_too() -> None:
    store = PostgresStore("postgresql://app@db/prod?pool_max_size=12&pool_min_size=2&schema=g")
    assert (store.pool_min_size, store.pool_max_size, store.location) == (2, 12, "postgresql://app@db/prod?schema=g")
    assert (
        PostgresStore("postgresql://app@db/prod").pool_min_size,
        PostgresStore("postgresql://db/p").pool_max_size,
    ) == (1, 4)
    assert PostgresStore("postgresql://db/p?pool_max_size=12", pool_max_size=3).pool_max_size == 3
    with pytest.raises(InitializationError, match=r"pool_max_size='lots' must be a whole number from 1 to 1000"):
        PostgresStore("postgresql://db/p?pool_max_size=lots")
    with pytest.raises(InitializationError, match=r"pool_min_size=5 must be between 1 and pool_max_size=4"):
        PostgresStore("postgresql://db/p?pool_min_size=5")


async def test_a_manager_closed_right_after_a_read_stops(make_backend: MakeBackend) -> None:
    # The feed's first read and the caller's race for the pool; on Python 3.11 the pool's
    # wait_for could swallow the feed's cancellation and close() waited forever.
    backend = await make_backend("postgres")
    for _ in range(10):
        manager = StateManager(backend.store())
        with anyio.fail_after(15):
            await manager.start()
            await manager.list(limit=10)
            await manager.close()
