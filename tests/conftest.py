"""Shared fixtures: a real SQLite file per test, a started StateManager, an in-memory MCP client.

Also the isolation that lets pytest-xdist workers run side by side (``.ci/run`` uses ``-n``):
files, ports and token files are per test already (``tmp_path``, port 0); PostgreSQL gets a
private database per test process, so no LISTEN/NOTIFY announcement (one channel per database)
from another worker, or from another run on the same server, can wake a store under test.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
import warnings
from collections.abc import AsyncGenerator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from mcp.server.mcpserver import MCPServer

from groundhog_mcp import StateManager
from groundhog_mcp.app import Settings, create_server
from groundhog_mcp.server import AppContext

# The report of the broken_build marker lives here, not in tests/reliability/conftest.py: under
# pytest-xdist the controller that prints the summary loads only this conftest.
from tests.reliability.broken_plugin import pytest_runtest_logreport, pytest_terminal_summary  # noqa: F401

POSTGRES_URL_VARIABLE = "GROUNDHOG_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
PRIVATE_DATABASE_VARIABLE = "GROUNDHOG_TEST_PRIVATE_DATABASE"

_private_database: tuple[str, str] | None = None  # (the server's URL, the database created on it)


def pytest_configure(config: pytest.Config) -> None:
    """Point ``GROUNDHOG_TEST_POSTGRES_URL`` at a database of this test process's own.

    Runs before any test module is imported, so the modules that read the variable at import
    (tests/conformance/conftest.py) see the private database. The xdist controller runs no
    test and gets none. An unreachable server changes nothing here: the PostgreSQL tests then
    fail with their own message.
    """
    global _private_database
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None and getattr(config.option, "numprocesses", None):
        # The xdist controller. Hand tests out one at a time, as .ci/run asks: by default xdist
        # first gives each worker a quarter of its share in one block, so with the longest tests
        # first (pytest_collection_modifyitems) one worker got nearly all of them and finished
        # minutes after the other.
        if getattr(config.option, "maxschedchunk", 0) is None:
            config.option.maxschedchunk = 1
        return
    base = os.environ.get(POSTGRES_URL_VARIABLE, DEFAULT_POSTGRES_URL)
    name = f"gh_test_{worker or 'main'}_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
            # Commits are not flushed to disk before they return: the schemas and migrations every
            # PostgreSQL test creates cost no fsync each. Nothing visible changes (a commit is seen
            # at once either way); only a crash of the PostgreSQL server could lose the last
            # commits, and no test crashes it.
            conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    except psycopg.OperationalError as exc:
        if "permission denied" in str(exc):
            _no_private_database(base, exc)
        return  # unreachable: the PostgreSQL tests say so
    except psycopg.Error as exc:
        _no_private_database(base, exc)
        return
    _private_database = (base, name)
    os.environ[POSTGRES_URL_VARIABLE] = urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
    # Dropped whole at the end of the session: tests/conformance/conftest.py may keep migrated
    # schemas in it for reuse (nothing left there outlives the run).
    os.environ[PRIVATE_DATABASE_VARIABLE] = name


def _no_private_database(base: str, exc: psycopg.Error) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        raise pytest.UsageError(
            f"parallel tests (-n) need a PostgreSQL database per worker, but CREATE DATABASE on {base} failed "
            f"({str(exc).strip()}); grant CREATEDB to that role or run without -n"
        )
    warnings.warn(f"tests share the database at {base}: CREATE DATABASE failed ({str(exc).strip()})", stacklevel=1)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Drop the private database once every fixture is torn down.

    Here rather than in ``pytest_unconfigure``: an xdist worker is shut down as soon as it
    reports the end of its session, before it would unconfigure.
    """
    global _private_database
    if _private_database is None:
        return
    base, name = _private_database
    _private_database = None
    with contextlib.suppress(psycopg.Error), psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Seconds per test of the tests that take 0.5 s or more (tests/durations.json, measured with -n 2;
# docs/testing.md says how to refresh it): only their order matters. Tests are handed out one at a
# time (--maxschedchunk 1, see pytest_configure), longest first, so the long ones start at once on
# different workers instead of last, running alone at the end. A test not in the file (new, or
# short) is estimated from its kind.
_DURATIONS: dict[str, float] = json.loads((Path(__file__).parent / "durations.json").read_text(encoding="utf-8"))
_PROCESS_TEST_S = 2.0  # a test marked e2e starts server processes
_IN_PROCESS_TEST_S = 0.1


def _expected_seconds(item: pytest.Item) -> float:
    if item.nodeid in _DURATIONS:
        return _DURATIONS[item.nodeid]
    return _PROCESS_TEST_S if item.get_closest_marker("e2e") else _IN_PROCESS_TEST_S


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest first; and since xdist's first hand-out gives each worker two tests, deal the
    first two rounds so that no worker starts with two of the longest."""
    items.sort(key=_expected_seconds, reverse=True)  # stable: files and modules keep their order
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and 2 * workers <= len(items):
        first, second = items[:workers], items[workers : 2 * workers]
        items[: 2 * workers] = [item for pair in zip(first, second, strict=True) for item in pair]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "groundhog.sqlite"


@pytest.fixture
async def manager(db_path: Path) -> AsyncGenerator[StateManager]:
    async with StateManager.open(db_path) as opened:
        yield opened


@pytest.fixture
def server(db_path: Path) -> MCPServer[AppContext]:
    return create_server(Settings(database=str(db_path), tools="all"))
