"""The lease's waiting line across server processes: first come, first served on one SQLite file
and on one PostgreSQL database (two server processes each), and a waiter killed -9 while it
waits holds the line up only until its heartbeat deadline.

Real ``groundhog-mcp`` servers over stdio; several ``lease`` calls in flight on each server at
once. The order the waiters came in is known because the test adds each only after the one
before it is in the line (a row in ``lease_waiters``); the order they were served in is the
order of their writes, each made with its lease's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conformance.conftest import POSTGRES_URL, Backend, MakeBackend, make_backend  # noqa: F401 - the fixture
from tests.e2e.harness import RawServer, raw_result_text

pytestmark = pytest.mark.e2e

NAME = "line"
# Bounds that turn a hang into a failure; they measure nothing.
BOUND_S = 60.0


class Session:
    """A stdio server with several tool calls in flight: one reader hands each response to its caller."""

    _ids = itertools.count(1)

    def __init__(self, server: RawServer) -> None:
        self.server = server
        self._futures: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, backend: Backend, env: dict[str, str], stderr: Path) -> Session:
        database = backend.path if backend.path is not None else backend.database
        session = cls(await RawServer.start(database, env=env, stderr_path=stderr))  # type: ignore[arg-type]
        await session.server.initialize()
        session._reader = asyncio.create_task(session._read())
        return session

    async def _read(self) -> None:
        stdout = self.server.process.stdout
        assert stdout is not None
        while line := await stdout.readline():
            message = RawServer.parse_protocol_line(line)
            future = self._futures.pop(message["id"], None) if "method" not in message else None
            if future is not None and not future.done():
                future.set_result(message)
        for future in self._futures.values():
            if not future.done():
                future.set_exception(AssertionError(f"server pid {self.server.pid} closed stdout"))

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """A tools/call result (``structuredContent``, ``isError``)."""
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._futures[request_id] = future
        await self.server.send(
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "method": "tools/call",
                "params": {"name": tool, "arguments": arguments},
            }
        )
        message = await future
        assert "result" in message, f"{tool}: JSON-RPC error {message.get('error')}"
        return message["result"]

    async def ok(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = await self.call(tool, arguments)
        assert not result.get("isError"), f"{tool}({arguments}) failed: {raw_result_text(result)}"
        return result["structuredContent"]

    async def stop(self) -> None:
        await self.server.ensure_dead()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


@pytest.fixture
async def start(make_backend: MakeBackend, tmp_path: Path, raw_env: dict[str, str]) -> AsyncGenerator[Any]:  # noqa: F811
    """``await start(kind, count)``: the backend and ``count`` servers on it; all killed at the end."""
    sessions: list[Session] = []

    async def begin(kind: str, count: int) -> tuple[Backend, list[Session]]:
        backend = await make_backend(kind)  # type: ignore[arg-type]
        if backend.path is not None:
            backend.path.parent.mkdir(parents=True)
        for i in range(count):
            sessions.append(await Session.start(backend, raw_env, tmp_path / f"server{i}.err"))
        return backend, list(sessions)

    yield begin
    for session in sessions:
        await session.stop()


async def in_line(backend: Backend) -> int:
    """Live rows of the waiting line, read beside the servers (SQLite file / PostgreSQL schema)."""
    query = "SELECT count(*) FROM lease_waiters WHERE alive_until > %s"
    if backend.path is not None:
        with contextlib.closing(sqlite3.connect(backend.path, timeout=10)) as conn:
            now = conn.execute("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')").fetchone()[0]
            return int(conn.execute(query.replace("%s", "?"), (now,)).fetchone()[0])
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await conn.execute(f'SET search_path TO "{backend.pg_schema}"')
        cur = await conn.execute(query.replace("%s", "now()"))
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """A bounded poll of the database the servers write (no event of this process says so)."""
    for _ in range(int(BOUND_S / 0.02)):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {BOUND_S:g} s: {what}")


async def queued(backend: Backend, count: int) -> None:
    async def there() -> bool:
        return await in_line(backend) == count

    await until(there, f"{count} waiters in line")


async def serve(session: Session, label: str, wait_seconds: float) -> dict[str, Any]:
    """Wait in line for the lease; once it is ours, write our label with its token and release."""
    taken = await session.call(
        "lease", {"name": NAME, "action": "take", "ttl_seconds": 30, "wait_seconds": wait_seconds, "holder": label}
    )
    if taken.get("isError"):
        return taken
    token = taken["structuredContent"]["token"]
    patch = [{"op": "add", "path": "/served/-", "value": label}]
    await session.ok("update_state", {"name": NAME, "patch": patch, "lease_token": token, "release_lease": True})
    return taken["structuredContent"]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_waiters_in_two_server_processes_are_served_in_the_order_they_came(start: Any, kind: str) -> None:
    backend, (a, b) = await start(kind, 2)
    await a.ok("register_context", {"name": NAME, "state": {"data": {"served": []}}})
    held = await a.ok("lease", {"name": NAME, "action": "take", "ttl_seconds": 30, "holder": "first"})
    # Interleaved over the two processes, two in flight on each at once.
    order = [(a, "a1"), (b, "b1"), (b, "b2"), (a, "a2"), (b, "b3"), (a, "a3")]
    waiters = []
    for count, (session, label) in enumerate(order, 1):
        waiters.append(asyncio.create_task(serve(session, label, 30)))
        await queued(backend, count)
    await a.ok("lease", {"name": NAME, "action": "release", "token": held["token"]})
    async with asyncio.timeout(BOUND_S):
        grants = await asyncio.gather(*waiters)
    served = (await b.ok("get_state", {"name": NAME}))["state"]["data"]["served"]
    assert served == [label for _, label in order]
    assert [g["token"] for g in grants] == [held["token"] + i for i in range(1, len(order) + 1)]
    assert await in_line(backend) == 0


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_waiter_killed_while_waiting_holds_the_line_only_until_its_deadline(start: Any, kind: str) -> None:
    backend, (a, doomed) = await start(kind, 2)
    await a.ok("register_context", {"name": NAME, "state": {"data": {"served": []}}})
    held = await a.ok("lease", {"name": NAME, "action": "take", "ttl_seconds": 30, "holder": "first"})
    # The doomed waiter would wait 60 s; the one behind it only 20 s: had the dead one kept its
    # place for its whole wait, the second's wait would run out with a leased error.
    dead = asyncio.create_task(serve(doomed, "doomed", 60))
    await queued(backend, 1)
    second = asyncio.create_task(serve(a, "second", 20))
    await queued(backend, 2)
    doomed.server.kill()
    await doomed.server.wait()
    await a.ok("lease", {"name": NAME, "action": "release", "token": held["token"]})
    async with asyncio.timeout(BOUND_S):
        got = await second
    assert not got.get("isError"), raw_result_text(got)
    assert got["holder"] == "local/second" and got["token"] == held["token"] + 1
    assert (await a.ok("get_state", {"name": NAME}))["state"]["data"]["served"] == ["second"]
    assert await in_line(backend) == 0
    dead.cancel()
    with contextlib.suppress(asyncio.CancelledError, AssertionError):
        await dead
