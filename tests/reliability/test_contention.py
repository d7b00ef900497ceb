"""Four server processes on one SQLite file, started at once on a file that does not exist yet.

Each process is driven by its own SDK client over stdio, concurrently:

- a compare-and-set counter: every increment counts exactly once (0 lost), conflicts are
  reported and retried, never silently overwritten;
- unconditional merge patches to disjoint keys: every one lands.

No client ever sees SQLite lock contention: the server waits within its busy timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mcp import Client

from tests.e2e.harness import assert_error_text, call_ok, mcp_client, result_text
from tests.reliability.battery import scaled

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

PROCESSES = 4
INCREMENTS_PER_PROCESS = scaled(50, 500)
PATCHES_PER_PROCESS = scaled(25, 250)
# Bounds that turn a livelock or a hang into a failure; they measure nothing.
MAX_ATTEMPTS_PER_INCREMENT = 500
WHOLE_RUN_TIMEOUT_S = scaled(120, 1200)


@dataclass
class Worker:
    index: int
    created: bool | None = None
    conflicts: int = 0
    acknowledged: list[int] = field(default_factory=list)
    revisions_read: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _check_error(worker: Worker, text: str) -> None:
    worker.errors.append(text)
    assert_error_text(text, "update_state")
    assert "locked" not in text.lower() and "busy" not in text.lower(), (
        f"process {worker.index}: lock contention reached the client: {text}"
    )
    assert "conflict" in text.lower(), f"process {worker.index}: unexpected error (not a conflict): {text}"


async def _increment(client: Client, worker: Worker) -> None:
    for _ in range(MAX_ATTEMPTS_PER_INCREMENT):
        read = await call_ok(client, "get_state", {"name": "counter"})
        worker.revisions_read.append(read["revision"])
        n = read["state"]["data"]["n"]
        result = await client.call_tool(
            "update_state", {"name": "counter", "data": {"n": n + 1}, "expected_revision": read["revision"]}
        )
        if not result.is_error:
            assert result.structured_content is not None
            assert result.structured_content["revision"] == read["revision"] + 1
            worker.acknowledged.append(result.structured_content["revision"])
            return
        _check_error(worker, result_text(result))
        worker.conflicts += 1
    raise AssertionError(f"process {worker.index}: no increment after {MAX_ATTEMPTS_PER_INCREMENT} attempts")


async def _run_worker(
    worker: Worker, database: Path, env: dict[str, str], stderr_path: Path, ready: asyncio.Barrier
) -> None:
    async with mcp_client(database, mode="legacy", stderr_path=stderr_path, env=env) as client:
        registered = await call_ok(
            client, "register_context", {"name": "counter", "state": {"data": {"n": 0}}, "if_exists": "return"}
        )
        worker.created = registered["created"]
        await call_ok(client, "register_context", {"name": "board", "if_exists": "return"})
        await ready.wait()  # every process is up: start together for real contention
        for _ in range(INCREMENTS_PER_PROCESS):
            await _increment(client, worker)
        for i in range(PATCHES_PER_PROCESS):
            result = await client.call_tool(
                "update_state", {"name": "board", "merge_patch": {f"p{worker.index}-{i}": i}}
            )
            if result.is_error:
                text = result_text(result)
                worker.errors.append(text)
                raise AssertionError(f"process {worker.index}: an unconditional merge patch failed: {text}")


async def test_four_processes_lose_no_update(database: Path, sdk_env: dict[str, str], tmp_path: Path) -> None:
    workers = [Worker(index=i) for i in range(PROCESSES)]
    ready = asyncio.Barrier(PROCESSES)
    async with asyncio.timeout(WHOLE_RUN_TIMEOUT_S), asyncio.TaskGroup() as group:
        for worker in workers:
            stderr_path = tmp_path / f"server-{worker.index}.stderr"
            group.create_task(_run_worker(worker, database, sdk_env, stderr_path, ready))

    total = PROCESSES * INCREMENTS_PER_PROCESS
    conflicts = sum(w.conflicts for w in workers)
    print(f"\ncontention: {PROCESSES} processes, {total} CAS increments, {conflicts} conflicts retried, 0 lost")

    # Exactly one process created the counter; the others got it back (if_exists='return').
    assert sorted(w.created for w in workers) == [False] * (PROCESSES - 1) + [True]
    # No lost update: every revision 2..total+1 was acknowledged to exactly one process.
    assert sorted(r for w in workers for r in w.acknowledged) == list(range(2, total + 2))
    for worker in workers:
        assert worker.acknowledged == sorted(worker.acknowledged), f"process {worker.index}: revisions went back"
        assert worker.revisions_read == sorted(worker.revisions_read), f"process {worker.index}: read went back"

    # A fifth process reads the outcome back.
    async with mcp_client(database, mode="legacy", stderr_path=tmp_path / "verify.stderr", env=sdk_env) as client:
        final = await call_ok(client, "get_state", {"name": "counter"})
        assert final["state"]["data"] == {"n": total}
        assert final["revision"] == 1 + total
        board = await call_ok(client, "get_state", {"name": "board"})
        expected = {f"p{w}-{i}": i for w in range(PROCESSES) for i in range(PATCHES_PER_PROCESS)}
        assert board["state"]["data"] == expected
        assert board["revision"] == 1 + PROCESSES * PATCHES_PER_PROCESS

        # Every retained step of the counter, newest first, until history retention (a 'compacted' error).
        steps = 0
        for revision in range(total + 1, 0, -1):
            past = await client.call_tool("get_state", {"name": "counter", "revision": revision})
            if past.is_error:
                assert "compacted" in result_text(past), f"revision {revision}: {result_text(past)}"
                break
            assert past.structured_content is not None
            assert past.structured_content["state"]["data"] == {"n": revision - 1}, f"revision {revision}"
            steps += 1
        assert steps >= min(total + 1, 50)

    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
