"""Two server processes on one SQLite file (Claude Desktop starts one per window).

Each process is driven by its own SDK client, concurrently, through compare-and-set loops on
one counter. CAS must make every increment count exactly once: conflicts are reported and
retried, never silently overwritten, and SQLite lock contention never leaks to a client.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mcp import Client

from tests.e2e.harness import assert_error_text, call_ok, mcp_client, result_text

pytestmark = pytest.mark.e2e

INCREMENTS_PER_CLIENT = 200
CLIENTS = 2
# Bounds that turn a livelock or a hang into a failure; they measure nothing.
MAX_ATTEMPTS_PER_INCREMENT = 200
WHOLE_RUN_TIMEOUT_S = 120.0


@dataclass
class WorkerLog:
    client: int
    created: bool | None = None
    conflicts: int = 0
    acknowledged: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    revisions_read: list[int] = field(default_factory=list)


async def _increment(client: Client, log: WorkerLog) -> None:
    for _ in range(MAX_ATTEMPTS_PER_INCREMENT):
        read = await call_ok(client, "get_state", {"name": "counter"})
        log.revisions_read.append(read["revision"])
        n = read["state"]["data"]["n"]
        result = await client.call_tool(
            "update_state", {"name": "counter", "data": {"n": n + 1}, "expected_revision": read["revision"]}
        )
        if not result.is_error:
            assert result.structured_content is not None
            assert result.structured_content["revision"] == read["revision"] + 1
            log.acknowledged.append(result.structured_content["revision"])
            return
        text = result_text(result)
        log.errors.append(text)
        assert_error_text(text, "update_state")
        if "conflict" not in text:
            raise AssertionError(f"client {log.client}: unexpected error (not a conflict): {text}")
        log.conflicts += 1
    raise AssertionError(f"client {log.client}: no increment after {MAX_ATTEMPTS_PER_INCREMENT} attempts")


async def _worker(
    index: int, database: Path, env: dict[str, str], stderr_path: Path, ready: asyncio.Barrier, log: WorkerLog
) -> None:
    async with mcp_client(database, mode="legacy", stderr_path=stderr_path, env=env) as client:
        registered = await call_ok(
            client, "register_context", {"name": "counter", "state": {"data": {"n": 0}}, "if_exists": "return"}
        )
        log.created = registered["created"]
        await ready.wait()  # both processes are up: start the loops together for real contention
        for _ in range(INCREMENTS_PER_CLIENT):
            await _increment(client, log)


async def test_two_processes_cas_counter(database: Path, sdk_env: dict[str, str], tmp_path: Path) -> None:
    # Every revision is read back at the end: keep the whole history (retention has its own tests).
    sdk_env = {**sdk_env, "GROUNDHOG_KEEP_REVISIONS": "0"}
    logs = [WorkerLog(client=i) for i in range(CLIENTS)]
    ready = asyncio.Barrier(CLIENTS)
    stderr_paths = [tmp_path / f"server-{i}.stderr" for i in range(CLIENTS)]
    async with asyncio.timeout(WHOLE_RUN_TIMEOUT_S), asyncio.TaskGroup() as group:
        for i in range(CLIENTS):
            group.create_task(_worker(i, database, sdk_env, stderr_paths[i], ready, logs[i]))

    total = CLIENTS * INCREMENTS_PER_CLIENT
    print(
        f"\nCAS conflicts: {', '.join(f'client {log.client}: {log.conflicts}' for log in logs)}; "
        f"total {sum(log.conflicts for log in logs)} for {total} increments"
    )

    # Exactly one process created the context; the other got it back (if_exists='return').
    assert sorted(log.created for log in logs) == [False, True]
    # No lost update: every revision 2..total+1 was acknowledged to exactly one client.
    acknowledged = sorted(r for log in logs for r in log.acknowledged)
    assert acknowledged == list(range(2, total + 2))
    for log in logs:
        assert log.acknowledged == sorted(log.acknowledged), f"client {log.client} saw its revisions go back"
        assert log.revisions_read == sorted(log.revisions_read), f"client {log.client} read a revision going back"
        for text in log.errors:
            assert "database is locked" not in text
            assert "locked" not in text, f"client {log.client} hit lock contention: {text}"

    # A third process reads the result back from the file: final value, final revision, every step.
    async with mcp_client(database, mode="legacy", stderr_path=tmp_path / "verify.stderr", env=sdk_env) as client:
        final = await call_ok(client, "get_state", {"name": "counter"})
        assert final["state"]["data"] == {"n": total}
        assert final["revision"] == 1 + total
        for revision in range(1, total + 2):
            past = await call_ok(client, "get_state", {"name": "counter", "revision": revision})
            assert past["state"]["data"] == {"n": revision - 1}, f"revision {revision}"
