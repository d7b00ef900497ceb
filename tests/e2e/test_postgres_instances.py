"""Several server processes on one PostgreSQL database: the scale-out contract (issue 7).

Real console scripts over stdio, the real PostgreSQL at ``GROUNDHOG_TEST_POSTGRES_URL``;
each test works in its own schema (``?schema=…``), dropped afterwards. Each instance gets its
own ``application_name`` so the tests can cut exactly its connections.

- CAS: two instances count one context to 600 together; a subscriber of one sees every
  change made through the other, in order, once.
- ``kill -9`` of one instance mid-stream: the other keeps serving, nothing acknowledged is
  lost, and the restarted instance reads the change feed on from its last sequence.
- ``pg_terminate_backend`` of one instance's connections, again and again, while it writes:
  every call answers (success or a clear error), nothing acknowledged is lost, and its
  subscribers keep hearing the other instance.

The harness passes its ``database`` argument on as ``--database``: a URL goes in as it is.
"""

from __future__ import annotations

import asyncio
import json
import uuid
import warnings
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import psycopg
import pytest
from mcp import Client

from groundhog_mcp import ContextState, StateManager
from groundhog_mcp.models import DEFAULT_NAMESPACE as NS
from groundhog_mcp.models import utcnow
from groundhog_mcp.store.base import DeadLetter, EventRecord, Mutation, StoredContext
from tests.cli_in_process import run_cli
from tests.conformance.conftest import POSTGRES_URL, require_postgres
from tests.e2e.harness import (
    Inbox,
    RawServer,
    assert_error_text,
    call_ok,
    json_log_lines,
    mcp_client,
    raw_result_text,
    result_text,
    server_command,
)

pytestmark = pytest.mark.e2e

STATE_URI = "groundhog://contexts/counter/state"
# Bounds that turn a hang or a livelock into a failure; they measure nothing.
CALL_BOUND_S = 15.0
WHOLE_TEST_BOUND_S = 60.0
MAX_ATTEMPTS_PER_INCREMENT = 200


@dataclass
class Instances:
    """One schema on the test server; a URL per instance, each with its own application_name."""

    schema: str

    def url(self, instance: str) -> str:
        separator = "&" if "?" in POSTGRES_URL else "?"
        return f"{POSTGRES_URL}{separator}schema={self.schema}&application_name={self.application_name(instance)}"

    def application_name(self, instance: str) -> str:
        return f"{self.schema}_{instance}"

    async def terminate(self, instance: str) -> int:
        """Cut every connection of one instance (its pool and its LISTEN session)."""
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as admin:
            cur = await admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
                (self.application_name(instance),),
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0


@pytest.fixture
async def instances() -> AsyncGenerator[Instances]:
    await require_postgres()
    schema = f"gh_e2e_{uuid.uuid4().hex[:12]}"
    yield Instances(schema)
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as admin:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@dataclass
class Counter:
    """What one writer was told: its acknowledged revisions (with their sequences) and errors."""

    name: str
    acknowledged: list[tuple[int, int]] = field(default_factory=list[tuple[int, int]])
    conflicts: int = 0
    errors: list[str] = field(default_factory=list[str])  # not conflicts: lost connections
    unknown: int = 0  # answered "may or may not have been applied"

    @property
    def revisions(self) -> list[int]:
        return [revision for revision, _ in self.acknowledged]


ToolCall = Callable[[str, dict[str, Any]], Awaitable[tuple[bool, dict[str, Any] | None, str]]]


def sdk_call(client: Client) -> ToolCall:
    async def call(tool: str, arguments: dict[str, Any]) -> tuple[bool, dict[str, Any] | None, str]:
        async with asyncio.timeout(CALL_BOUND_S):  # never hangs
            result = await client.call_tool(tool, arguments)
        return not result.is_error, result.structured_content, result_text(result)

    return call


def raw_call(server: RawServer) -> ToolCall:
    async def call(tool: str, arguments: dict[str, Any]) -> tuple[bool, dict[str, Any] | None, str]:
        async with asyncio.timeout(CALL_BOUND_S):
            result = await server.call_tool(tool, arguments)
        return not result.get("isError"), result.get("structuredContent"), raw_result_text(result)

    return call


async def increment(call: ToolCall, log: Counter) -> None:
    """One compare-and-set increment of ``counter``, retried on conflicts and on lost connections."""
    for _ in range(MAX_ATTEMPTS_PER_INCREMENT):
        ok, read, text = await call("get_state", {"name": "counter"})
        if not ok:
            assert_error_text(text, "get_state")
            assert "database: " in text, f"{log.name}: unexpected read error: {text}"
            log.errors.append(text)
            continue
        assert read is not None
        n, revision = read["state"]["data"]["n"], read["revision"]
        ok, written, text = await call(
            "update_state", {"name": "counter", "data": {"n": n + 1}, "expected_revision": revision}
        )
        if ok:
            assert written is not None and written["revision"] == revision + 1
            log.acknowledged.append((written["revision"], written["sequence"]))
            return
        assert_error_text(text, "update_state")
        if "conflict" in text:
            log.conflicts += 1
            continue
        assert "database: " in text, f"{log.name}: unexpected write error: {text}"
        log.errors.append(text)
        if "may or may not have been applied" in text:
            log.unknown += 1
    raise AssertionError(f"{log.name}: no increment after {MAX_ATTEMPTS_PER_INCREMENT} attempts")


async def watch(call: ToolCall, cursor: int, until_revision: int, seen: list[dict[str, Any]]) -> int:
    """``wait_for_change`` from ``cursor`` until ``counter`` reaches ``until_revision``; returns the cursor."""
    while not seen or seen[-1]["revision"] < until_revision:
        ok, result, text = await call(
            "wait_for_change", {"contexts": ["counter"], "after_sequence": cursor, "timeout": 10}
        )
        assert ok, text
        assert result is not None and result["timed_out"] is False, result
        seen.extend(result["changes"])
        cursor = result["cursor"]
    return cursor


def assert_nothing_acknowledged_lost(final: dict[str, Any], *logs: Counter) -> None:
    """CAS increments: the value counts every write that committed, so it bounds what was acknowledged."""
    revisions = sorted(r for log in logs for r in log.revisions)
    assert len(revisions) == len(set(revisions)), "a revision was acknowledged twice"
    acknowledged, unknown = len(revisions), sum(log.unknown for log in logs)
    n = final["state"]["data"]["n"]
    assert final["revision"] == n + 1, "an increment was overwritten"
    assert acknowledged <= n <= acknowledged + unknown, (acknowledged, unknown, n)
    assert not revisions or revisions[-1] <= final["revision"]


def assert_feed_in_order(seen: list[dict[str, Any]], first_revision: int, last_revision: int) -> None:
    """Every revision once, in order, with strictly increasing sequences."""
    assert [c["revision"] for c in seen] == list(range(first_revision, last_revision + 1))
    sequences = [c["sequence"] for c in seen]
    assert sequences == sorted(set(sequences))


async def test_two_instances_count_to_600_and_a_subscriber_hears_every_change_of_the_other(
    instances: Instances, tmp_path: Path, sdk_env: dict[str, str]
) -> None:
    inbox = Inbox()
    async with (
        asyncio.timeout(WHOLE_TEST_BOUND_S),
        mcp_client(
            instances.url("a"),
            mode="legacy",
            stderr_path=tmp_path / "a.stderr",
            env=sdk_env,
            message_handler=inbox,
        ) as a,
        mcp_client(instances.url("b"), mode="legacy", stderr_path=tmp_path / "b.stderr", env=sdk_env) as b,
    ):
        registered = await call_ok(b, "register_context", {"name": "counter", "state": {"data": {"n": 0}}})
        await inbox.wait_for_count(types.ResourceListChangedNotification, 1)  # B's registration, heard by A
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await a.subscribe_resource(STATE_URI)
        logs = [Counter("a"), Counter("b")]
        seen: list[dict[str, Any]] = []

        async def count(client: Client, log: Counter) -> None:
            for _ in range(300):
                await increment(sdk_call(client), log)

        async with asyncio.TaskGroup() as group:
            group.create_task(watch(sdk_call(a), registered["sequence"], 601, seen))
            group.create_task(count(a, logs[0]))
            group.create_task(count(b, logs[1]))
        final = await call_ok(a, "get_state", {"name": "counter"})
        await inbox.wait_for_count(types.ResourceUpdatedNotification, 600)
        updated = [str(m.params.uri) for m in inbox.notifications if isinstance(m, types.ResourceUpdatedNotification)]
    print(f"\nCAS conflicts: a {logs[0].conflicts}, b {logs[1].conflicts} for 600 increments")

    assert final["state"]["data"] == {"n": 600} and final["revision"] == 601
    assert sorted(logs[0].revisions + logs[1].revisions) == list(range(2, 602))
    assert not logs[0].errors and not logs[1].errors
    # A's subscriber: every change once, in order; every write acknowledged to B among them.
    assert_feed_in_order(seen, 2, 601)
    assert set(logs[1].acknowledged) <= {(c["revision"], c["sequence"]) for c in seen}
    assert updated == [STATE_URI] * 600


async def test_kill_9_of_one_instance_loses_nothing_and_the_restarted_one_catches_up(
    instances: Instances, tmp_path: Path, sdk_env: dict[str, str], raw_env: dict[str, str]
) -> None:
    b_stderr = tmp_path / "b.stderr"
    async with (
        asyncio.timeout(WHOLE_TEST_BOUND_S),
        mcp_client(instances.url("a"), mode="legacy", stderr_path=tmp_path / "a.stderr", env=sdk_env) as a,
    ):
        await call_ok(a, "register_context", {"name": "counter", "state": {"data": {"n": 0}}})
        b = await RawServer.start(instances.url("b"), env=raw_env, stderr_path=b_stderr)
        restarted: RawServer | None = None
        try:
            await b.initialize()
            logs = [Counter("a"), Counter("b"), Counter("b restarted")]
            b_killed = asyncio.Event()

            async def b_until_killed() -> None:
                for _ in range(40):
                    await increment(raw_call(b), logs[1])
                # One more write on its way (read, then send the write without waiting), then SIGKILL.
                read = await b.call_ok("get_state", {"name": "counter"})
                n = read["state"]["data"]["n"]
                arguments = {"name": "counter", "data": {"n": n + 1}, "expected_revision": read["revision"]}
                await b.send_tool_call("update_state", arguments)
                b.kill()
                assert await b.wait() == -9
                logs[1].unknown += 1  # the in-flight write may have committed, unanswered
                b_killed.set()

            async def a_throughout() -> None:
                while not b_killed.is_set():
                    await increment(sdk_call(a), logs[0])
                for _ in range(40):  # the survivor keeps serving
                    await increment(sdk_call(a), logs[0])

            async with asyncio.TaskGroup() as group:
                group.create_task(b_until_killed())
                group.create_task(a_throughout())

            # The restarted instance reads the feed on from the last sequence B acknowledged.
            restarted = await RawServer.start(instances.url("b"), env=raw_env, stderr_path=b_stderr)
            await restarted.initialize()
            last_revision, last_sequence = logs[1].acknowledged[-1]
            current = (await call_ok(a, "get_state", {"name": "counter"}))["revision"]
            caught_up: list[dict[str, Any]] = []
            cursor = await watch(raw_call(restarted), last_sequence, current, caught_up)
            assert_feed_in_order(caught_up, last_revision + 1, current)
            # And it writes again; A hears it through its feed.
            for _ in range(10):
                await increment(raw_call(restarted), logs[2])
            heard: list[dict[str, Any]] = []
            await watch(sdk_call(a), cursor, logs[2].revisions[-1], heard)
            assert_feed_in_order(heard, current + 1, logs[2].revisions[-1])
            final = await call_ok(a, "get_state", {"name": "counter"})
            assert await restarted.close() == 0
        finally:
            await b.ensure_dead()
            if restarted is not None:
                await restarted.ensure_dead()
    assert len(logs[1].acknowledged) == 40 and len(logs[0].acknowledged) >= 40 and len(logs[2].acknowledged) == 10
    assert_nothing_acknowledged_lost(final, *logs)


async def test_cut_connections_never_hang_a_call_nor_lose_an_acknowledged_write(
    instances: Instances, tmp_path: Path, sdk_env: dict[str, str]
) -> None:
    a_stderr = tmp_path / "a.stderr"
    async with (
        asyncio.timeout(WHOLE_TEST_BOUND_S),
        mcp_client(instances.url("a"), mode="legacy", stderr_path=a_stderr, env=sdk_env) as a,
        mcp_client(instances.url("b"), mode="legacy", stderr_path=tmp_path / "b.stderr", env=sdk_env) as b,
    ):
        registered = await call_ok(a, "register_context", {"name": "counter", "state": {"data": {"n": 0}}})
        logs = [Counter("a"), Counter("b")]
        cuts: list[int] = []
        seen: list[dict[str, Any]] = []
        reached = {count: asyncio.Event() for count in (20, 50, 80)}

        async def a_writes() -> None:
            for _ in range(120):
                await increment(sdk_call(a), logs[0])
                if (event := reached.get(len(logs[0].acknowledged))) is not None:
                    event.set()

        async def cut_a_mid_stream() -> None:
            for event in reached.values():
                await event.wait()  # A goes on writing meanwhile: the cut lands mid-call or between calls
                cuts.append(await instances.terminate("a"))

        async def b_writes() -> None:
            for _ in range(60):
                await increment(sdk_call(b), logs[1])

        async with asyncio.TaskGroup() as group:
            group.create_task(a_writes())
            group.create_task(cut_a_mid_stream())
            group.create_task(b_writes())
            # A's change feed comes back after every cut: every change, B's included, in order.
            group.create_task(watch(sdk_call(a), registered["sequence"], 181, seen))
        final = await call_ok(a, "get_state", {"name": "counter"})
        await watch(sdk_call(a), seen[-1]["sequence"], final["revision"], seen)  # an unanswered write too
    assert len(cuts) == 3 and all(n >= 2 for n in cuts), cuts  # each time the pool's and the LISTEN session
    assert_nothing_acknowledged_lost(final, *logs)
    assert_feed_in_order(seen, 2, final["revision"])
    print(f"\nafter {len(cuts)} cuts: {len(logs[0].errors)} clear errors answered to A: {logs[0].errors[:3]}")
    events = [r["event"] for r in json_log_lines(a_stderr.read_text())]
    assert any("LISTEN session lost" in e for e in events), events
    assert any("LISTEN session restored" in e for e in events), events


async def test_maintenance_commands_take_a_postgresql_url(instances: Instances, tmp_path: Path) -> None:
    """``db status`` / ``db migrate`` / ``import`` / ``export`` / ``backup`` with ``--database postgresql://…``;
    SQLite -> PostgreSQL -> SQLite through the commands keeps every record."""
    url = instances.url("cli")
    source, copy = tmp_path / "source.sqlite", tmp_path / "copy.sqlite"

    async def run(*args: str, process: bool = False) -> tuple[str, str]:
        """In the test process (tests/cli_in_process.py), or as the console script with ``process``:
        ``db status`` and ``db migrate`` print to the ``sys.stdout`` bound when the CLI was imported."""
        with anyio.fail_after(60):
            if process:
                ran = await anyio.run_process([server_command(), *args], check=False)
                code, stdout, stderr = ran.returncode, ran.stdout.decode(), ran.stderr.decode()
            else:
                ran_in_process = await anyio.to_thread.run_sync(lambda: run_cli(*args, check=False))
                code, stdout, stderr = ran_in_process.returncode, ran_in_process.stdout, ran_in_process.stderr
        assert code == 0, stderr
        assert "Traceback" not in stderr and "warning" not in stderr, stderr
        return stdout, stderr

    status = json.loads((await run("--database", url, "db", "status", process=True))[0])
    assert (status["backend"], status["schema_version"], status["contexts"]) == ("postgres", 0, 0)
    assert status["pending_migrations"] and status["location"].endswith(f"?schema={instances.schema}")
    migrated = json.loads((await run("--database", url, "db", "migrate", process=True))[0])
    assert migrated["applied"] == status["pending_migrations"]
    assert json.loads((await run("--database", url, "db", "status", process=True))[0])["pending_migrations"] == []

    await fill(source)
    exported = tmp_path / "sqlite.jsonl"
    await run("--database", str(source), "export", "-o", str(exported))
    _, said = await run("--database", url, "import", str(exported))
    assert f"into {status['location']}" in said
    backup = tmp_path / "postgres-backup.jsonl"
    await run("--database", url, "backup", str(backup))
    await run("--database", str(copy), "import", str(backup))
    records = [json.loads(line) for line in exported.read_text().splitlines()]
    again = [json.loads(line) for line in (await run("--database", str(copy), "export"))[0].splitlines()]
    assert again[1:] == records[1:]  # all but the header (its time)
    kinds = {r["type"] for r in records}
    assert kinds == {"header", "context", "revision", "name_revision", "change", "event", "dead_letter"}


async def fill(path: Path) -> None:
    """A SQLite database with every kind of record: history, an event with its key, a dead letter."""
    async with StateManager.open(path) as manager:
        await manager.register("alpha", state=ContextState(data={"n": 1}))
        written = await manager.update("alpha", data={"n": 2})

        def event_write(current: StoredContext) -> Mutation:
            return Mutation(ContextState(data={"n": 3}), [{"op": "replace", "path": "/data/n", "value": 3}], "event")

        await manager.store.mutate(NS, "alpha", None, event_write, actor="t", event=EventRecord("set", {"n": 3}, "k"))
        letter = DeadLetter(0, NS, written.context.id, "alpha", "set", {"n": 9}, None, 3, "handler failed", utcnow())
        await manager.store.add_dead_letter(letter)
