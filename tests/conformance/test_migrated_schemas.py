"""The reuse of migrated PostgreSQL schemas between tests (tests/conformance/migrated_schemas.py):
a schema comes back exactly as migrations leave it, and one a test changed is never reused."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from groundhog_mcp import ContextState, StateManager
from groundhog_mcp.store import open_store

from .conftest import postgres_url, require_postgres
from .migrated_schemas import MigratedSchemas


async def _contents(conn: psycopg.AsyncConnection, schema: str) -> dict[str, list[str]]:
    cur = await conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,))
    tables = [r[0] for r in await cur.fetchall()]
    rows = {}
    for table in tables:
        # applied_at says when each migration ran: the template's and a test's differ.
        row = "(t.version, t.name)" if table == "schema_migrations" else "t"
        cur = await conn.execute(f'SELECT {row}::text FROM "{schema}"."{table}" AS t ORDER BY 1')
        rows[table] = [r[0] for r in await cur.fetchall()]
    for sequence in ("change_sequence", "audit_sequence"):
        cur = await conn.execute(f'SELECT last_value, is_called FROM "{schema}"."{sequence}"')
        rows[sequence] = [str(await cur.fetchone())]
    return rows


@pytest.fixture
async def pool() -> MigratedSchemas:
    await require_postgres()
    made = MigratedSchemas(postgres_url())
    assert await made.take() is None  # makes the template; nothing waits yet
    return made


async def _migrated(schema: str) -> None:
    manager = StateManager(open_store(f"{postgres_url()}?schema={schema}"))
    await manager.start()
    try:
        await manager.register("notes", state=ContextState(data={"n": 1}))
        await manager.update("notes", data={"n": 2})
    finally:
        await manager.close()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(None, id="unchanged"),
        pytest.param("ALTER TABLE {s}.contexts ADD COLUMN extra TEXT", id="column"),
        pytest.param("CREATE INDEX extra ON {s}.changes (name)", id="index"),
        pytest.param("GRANT SELECT ON {s}.history TO PUBLIC", id="privilege"),
        pytest.param("DROP TRIGGER audit_log_no_update_delete ON {s}.audit_log", id="trigger"),
        pytest.param("ALTER SEQUENCE {s}.change_sequence INCREMENT BY 2", id="sequence"),
    ],
)
async def test_a_schema_comes_back_as_migrations_leave_it_unless_a_test_changed_it(
    pool: MigratedSchemas, change: str | None
) -> None:
    assert pool.template is not None
    schema = f"gh_test_{uuid.uuid4().hex[:16]}"
    await _migrated(schema)
    async with await psycopg.AsyncConnection.connect(postgres_url(), autocommit=True) as conn:
        try:
            template = await _contents(conn, pool.template)
            assert await _contents(conn, schema) != template  # written to
            assert await pool.give_back(conn, schema)  # first return: compared with the template
            assert await _contents(conn, schema) == template
            assert await pool.take() == schema
            await _migrated(schema)  # the next test writes to it
            if change is not None:
                await conn.execute(change.format(s=f'"{schema}"'))
            assert await pool.give_back(conn, schema) is (change is None)
            assert await pool.take() == (schema if change is None else None)
        finally:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.execute(f'DROP SCHEMA IF EXISTS "{pool.template}" CASCADE')


async def test_a_schema_never_migrated_is_not_kept(pool: MigratedSchemas) -> None:
    schema = f"gh_test_{uuid.uuid4().hex[:16]}"
    async with await psycopg.AsyncConnection.connect(postgres_url(), autocommit=True) as conn:
        try:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            assert not await pool.give_back(conn, schema)
        finally:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.execute(f'DROP SCHEMA IF EXISTS "{pool.template}" CASCADE')
