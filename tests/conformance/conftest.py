"""Fixtures for the backend conformance suite: every test runs once per backend.

SQLite gets a fresh file under ``tmp_path``; PostgreSQL a fresh schema with a random name
in the database at ``GROUNDHOG_TEST_POSTGRES_URL`` (default: the local test server), dropped
afterwards. An unreachable PostgreSQL fails the suite: a backend nobody tested is not
a backend that passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import os
import sqlite3
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg
import pytest

from groundhog_mcp import StateManager
from groundhog_mcp.security.crypto import Keyring, generate_key, parse_key
from groundhog_mcp.store import Retention, Store, open_store

POSTGRES_URL = os.environ.get("GROUNDHOG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# sqlite-encrypted, postgres-encrypted: encryption at rest on (docs/security.md "Encryption at rest").
BACKENDS = ["sqlite", "postgres", "sqlite-encrypted", "postgres-encrypted"]
_KEYRING = Keyring(parse_key(generate_key(), source="the conformance suite's key"))

Kind = Literal["sqlite", "postgres"]


@dataclass(frozen=True)
class Backend:
    """One empty database of one kind, and raw access to it for what the Store API can't show."""

    kind: Kind
    database: str
    path: Path | None = None
    pg_schema: str | None = None
    cipher: Keyring | None = None

    def store(self, **kwargs: Any) -> Store:
        """A new, unopened store instance on this database (as ``--database`` would build it)."""
        # History retention is its own suite (tests/store/test_retention.py): here every revision stays.
        kwargs.setdefault("retention", Retention(keep_revisions=0))
        if self.cipher is not None:
            kwargs.setdefault("cipher", self.cipher)
        return open_store(self.database, **kwargs)

    async def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run raw SQL outside the store (committed); the rows it returns."""
        if self.path is not None:
            with contextlib.closing(sqlite3.connect(self.path)) as conn, conn:
                return conn.execute(query.replace("%s", "?"), params).fetchall()
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
            await conn.execute(f'SET search_path TO "{self.pg_schema}"')
            cur = await conn.execute(query, params)
            return await cur.fetchall() if cur.description else []

    async def fingerprint(self) -> Any:
        """Everything stored, to prove that something was not modified."""
        if self.path is not None:
            files = sorted(self.path.parent.glob(self.path.name + "*"))
            return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", (self.pg_schema,)
            )
            tables = [r[0] for r in await cur.fetchall()]
            content: dict[str, list[str]] = {}
            for table in tables:
                rows = await conn.execute(f'SELECT t::text FROM "{self.pg_schema}"."{table}" AS t ORDER BY 1')
                content[table] = [r[0] for r in await rows.fetchall()]
            return content


async def require_postgres() -> None:
    try:
        conn = await psycopg.AsyncConnection.connect(POSTGRES_URL, connect_timeout=5)
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL at {POSTGRES_URL} is unreachable ({exc}); the conformance suite needs it. Start it "
            "(pg_ctlcluster --skip-systemctl-redirect <version> main start) or set GROUNDHOG_TEST_POSTGRES_URL.",
            pytrace=False,
        )
    await conn.close()


MakeBackend = Callable[[Kind], Awaitable[Backend]]


@pytest.fixture
async def make_backend(tmp_path: Path) -> AsyncGenerator[MakeBackend]:
    """A factory of fresh, empty databases; PostgreSQL schemas are dropped at teardown."""
    numbers = itertools.count(1)
    schemas: list[str] = []

    async def make(kind: Kind) -> Backend:
        if kind == "sqlite":
            path = tmp_path / f"db{next(numbers)}" / "groundhog.sqlite"
            return Backend("sqlite", str(path), path=path)
        await require_postgres()
        schema = f"gh_test_{uuid.uuid4().hex[:16]}"
        schemas.append(schema)
        return Backend("postgres", f"{POSTGRES_URL}?schema={schema}", pg_schema=schema)

    yield make
    if schemas:
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
            for schema in schemas:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, make_backend: MakeBackend) -> Backend:
    if request.param == "sqlite-encrypted":
        return dataclasses.replace(await make_backend("sqlite"), cipher=_KEYRING)
    if request.param == "postgres-encrypted":
        return dataclasses.replace(await make_backend("postgres"), cipher=_KEYRING)
    return await make_backend(request.param)


@pytest.fixture
async def store(backend: Backend) -> AsyncGenerator[Store]:
    opened = backend.store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def manager(backend: Backend) -> AsyncGenerator[StateManager]:
    opened = StateManager(backend.store())
    await opened.start()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def other(backend: Backend) -> AsyncGenerator[StateManager]:
    """A second instance on the same database (another process, another PostgreSQL instance)."""
    opened = StateManager(backend.store())
    await opened.start()
    try:
        yield opened
    finally:
        await opened.close()
