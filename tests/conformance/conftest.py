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
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import psycopg
import pytest

from groundhog_mcp import StateManager
from groundhog_mcp.security.crypto import Keyring, generate_key, parse_key
from groundhog_mcp.store import Retention, Store, open_store
from tests.conformance.migrated_schemas import migrated_schemas


def postgres_url() -> str:
    """The PostgreSQL database of this test process, read when used: this module is imported
    before tests/conftest.py's ``pytest_configure`` points the variable at the process's private
    database when pytest is given a path in this directory (its conftests load first)."""
    return os.environ.get("GROUNDHOG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def __getattr__(name: str) -> str:
    """``POSTGRES_URL``, as the modules importing it expect it: :func:`postgres_url`."""
    if name == "POSTGRES_URL":
        return postgres_url()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        async with await psycopg.AsyncConnection.connect(postgres_url(), autocommit=True) as conn:
            await conn.execute(f'SET search_path TO "{self.pg_schema}"')
            cur = await conn.execute(query, params)
            return await cur.fetchall() if cur.description else []

    async def fingerprint(self) -> Any:
        """Everything stored, to prove that something was not modified."""
        if self.path is not None:
            files = sorted(self.path.parent.glob(self.path.name + "*"))
            return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
        async with await psycopg.AsyncConnection.connect(postgres_url(), autocommit=True) as conn:
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
        conn = await psycopg.AsyncConnection.connect(postgres_url(), connect_timeout=5)
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL at {postgres_url()} is unreachable ({exc}); the conformance suite needs it. Start it "
            "(pg_ctlcluster --skip-systemctl-redirect <version> main start) or set GROUNDHOG_TEST_POSTGRES_URL.",
            pytrace=False,
        )
    await conn.close()


class MakeBackend(Protocol):
    def __call__(self, kind: Kind, *, migrated: bool = False) -> Awaitable[Backend]: ...


@pytest.fixture
async def make_backend(tmp_path: Path) -> AsyncGenerator[MakeBackend]:
    """A factory of fresh, empty databases; PostgreSQL schemas are dropped at teardown.

    ``migrated=True``: for a test whose first step opens a store on it (which migrates an empty
    schema), a PostgreSQL schema may come migrated already, reset to what migrations leave
    (tests/conformance/migrated_schemas.py); at teardown such a schema, if it still has the
    template's definition, is reset and kept for the next such test instead of dropped.
    """
    numbers = itertools.count(1)
    schemas: list[tuple[str, bool]] = []  # (schema, asked for migrated)
    pool = migrated_schemas(postgres_url())

    async def make(kind: Kind, *, migrated: bool = False) -> Backend:
        if kind == "sqlite":
            path = tmp_path / f"db{next(numbers)}" / "groundhog.sqlite"
            return Backend("sqlite", str(path), path=path)
        await require_postgres()
        schema = (await pool.take() if pool is not None and migrated else None) or f"gh_test_{uuid.uuid4().hex[:16]}"
        schemas.append((schema, migrated))
        return Backend("postgres", f"{postgres_url()}?schema={schema}", pg_schema=schema)

    yield make
    if schemas:
        async with await psycopg.AsyncConnection.connect(postgres_url(), autocommit=True) as conn:
            for schema, migrated in schemas:
                if pool is None or not migrated or not await pool.give_back(conn, schema):
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# This module's fixtures that open a store on the backend as their first step: a test of this
# directory using one gets a schema that may come migrated (make_backend's migrated=True), which
# is what that first open would leave. A module elsewhere whose every test opens a store on
# ``backend`` before anything else says so with ``BACKEND_OPENED_FIRST = True``.
_OPENING_FIXTURES = ("store", "manager", "other")
_HERE = Path(__file__).parent


def _opened_first(request: pytest.FixtureRequest) -> bool:
    if getattr(request.module, "BACKEND_OPENED_FIRST", False):
        return True
    return request.path.parent == _HERE and any(name in request.fixturenames for name in _OPENING_FIXTURES)


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, make_backend: MakeBackend) -> Backend:
    migrated = _opened_first(request)
    if request.param == "sqlite-encrypted":
        return dataclasses.replace(await make_backend("sqlite"), cipher=_KEYRING)
    if request.param == "postgres-encrypted":
        return dataclasses.replace(await make_backend("postgres", migrated=migrated), cipher=_KEYRING)
    return await make_backend(request.param, migrated=migrated)


@pytest.fixture
async def store(backend: Backend) -> AsyncGenerator[Store]:
    opened = backend.store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@contextlib.asynccontextmanager
async def _started_manager(backend: Backend) -> AsyncGenerator[StateManager]:
    opened = StateManager(backend.store())
    await opened.start()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def manager(backend: Backend) -> AsyncGenerator[StateManager]:
    async with _started_manager(backend) as opened:
        yield opened


@pytest.fixture
async def other(backend: Backend) -> AsyncGenerator[StateManager]:
    """A second instance on the same database (another process, another PostgreSQL instance)."""
    async with _started_manager(backend) as opened:
        yield opened
