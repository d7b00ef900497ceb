"""Four server processes on one SQLite file, started at once on a file that does not exist yet.

Each process is driven by its own SDK client over stdio, concurrently:

- lock-step compare-and-set increments: every process reads the counter, all wait until all have
  read, then all write with the revision they read. That is the window a lost update needs (two
  writers on one read revision), hit on purpose ``LOCKSTEP_ROUNDS`` times: exactly one write per
  round applies, the others get a conflict;
- free-running compare-and-set increments: conflicts are reported and retried;
- unconditional merge patches to disjoint keys: every one lands.

The lost-update check: every increment acknowledged is in the counter, and every acknowledged
revision is the read revision + 1, acknowledged to exactly one process. ``[broken-no_cas]`` (a
build that ignores ``expected_revision``) must fail there. No client ever sees SQLite lock
contention: the server waits within its busy timeout.
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
from tests.reliability.broken_plugin import Build

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

PROCESSES = 4
LOCKSTEP_ROUNDS = 5
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
    lockstep_conflicts: int = 0
    # (revision read, revision acknowledged) of every increment this process was told applied
    acknowledged: list[tuple[int, int]] = field(default_factory=list)
    revisions_read: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _check_error(worker: Worker, text: str) -> None:
    worker.errors.append(text)
    assert_error_text(text, "update_state")
    assert "locked" not in text.lower() and "busy" not in text.lower(), (
        f"process {worker.index}: lock contention reached the client: {text}"
    )
    assert "conflict" in text.lower(), f"process {worker.index}: unexpected error (not a conflict): {text}"


async def _read(client: Client, worker: Worker) -> tuple[int, int]:
    read = await call_ok(client, "get_state", {"name": "counter"})
    worker.revisions_read.append(read["revision"])
    return read["revision"], read["state"]["data"]["n"]


async def _write(client: Client, worker: Worker, revision: int, n: int) -> bool:
    """One CAS increment from what was read; True if it applied."""
    result = await client.call_tool(
        "update_state", {"name": "counter", "data": {"n": n + 1}, "expected_revision": revision}
    )
    if result.is_error:
        _check_error(worker, result_text(result))
        return False
    assert result.structured_content is not None
    worker.acknowledged.append((revision, result.structured_content["revision"]))
    return True


async def _increment(client: Client, worker: Worker) -> None:
    for _ in range(MAX_ATTEMPTS_PER_INCREMENT):
        if await _write(client, worker, *await _read(client, worker)):
            return
        worker.conflicts += 1
    raise AssertionError(f"process {worker.index}: no increment after {MAX_ATTEMPTS_PER_INCREMENT} attempts")


async def _run_worker(
    worker: Worker, database: Path, env: dict[str, str], stderr_path: Path, ready: asyncio.Barrier, increments: int
) -> None:
    async with mcp_client(database, mode="legacy", stderr_path=stderr_path, env=env) as client:
        registered = await call_ok(
            client, "register_context", {"name": "counter", "state": {"data": {"n": 0}}, "if_exists": "return"}
        )
        worker.created = registered["created"]
        await call_ok(client, "register_context", {"name": "board", "if_exists": "return"})
        await ready.wait()  # every process is up
        for _ in range(LOCKSTEP_ROUNDS):
            revision, n = await _read(client, worker)
            await ready.wait()  # every process has read the same revision
            if not await _write(client, worker, revision, n):
                worker.lockstep_conflicts += 1
            await ready.wait()  # every process has written
        for _ in range(increments):
            await _increment(client, worker)
        for i in range(PATCHES_PER_PROCESS):
            result = await client.call_tool(
                "update_state", {"name": "board", "merge_patch": {f"p{worker.index}-{i}": i}}
            )
            if result.is_error:
                text = result_text(result)
                worker.errors.append(text)
                raise AssertionError(f"process {worker.index}: an unconditional merge patch failed: {text}")


def _check_no_lost_update(workers: list[Worker], final_n: int, final_revision: int) -> None:
    """Every acknowledged increment counted once: the lost-update check."""
    acknowledged = sorted(pair for w in workers for pair in w.acknowledged)
    applied_on_top = [(read, got) for read, got in acknowledged if got != read + 1]
    revisions = [got for _, got in acknowledged]
    assert final_n == len(acknowledged) and not applied_on_top and revisions == list(range(2, final_revision + 1)), (
        f"lost update: {len(acknowledged)} increments were acknowledged, the counter is {final_n} at revision "
        f"{final_revision}; {len(applied_on_top)} writes applied on a revision other than the one they read, "
        f"e.g. (read, acknowledged) {applied_on_top[:5]}"
    )


@pytest.mark.broken_build("no_cas", match=r"^lost update: ")
async def test_four_processes_lose_no_update(
    database: Path, sdk_env: dict[str, str], tmp_path: Path, build: Build
) -> None:
    # Against a broken build the lock-step rounds decide; the free-running phase is kept short.
    increments = 5 if build.broken else INCREMENTS_PER_PROCESS
    workers = [Worker(index=i) for i in range(PROCESSES)]
    ready = asyncio.Barrier(PROCESSES)
    async with asyncio.timeout(WHOLE_RUN_TIMEOUT_S), asyncio.TaskGroup() as group:
        for worker in workers:
            stderr_path = tmp_path / f"server-{worker.index}.stderr"
            group.create_task(_run_worker(worker, database, sdk_env, stderr_path, ready, increments))

    total = LOCKSTEP_ROUNDS + PROCESSES * increments
    conflicts = sum(w.conflicts for w in workers)
    print(
        f"\ncontention: {PROCESSES} processes, {LOCKSTEP_ROUNDS} lock-step rounds, {total} CAS increments, "
        f"{conflicts} conflicts retried"
    )

    # A fifth process reads the outcome back.
    async with mcp_client(database, mode="legacy", stderr_path=tmp_path / "verify.stderr", env=sdk_env) as client:
        final = await call_ok(client, "get_state", {"name": "counter"})
        _check_no_lost_update(workers, final["state"]["data"]["n"], final["revision"])
        assert final["state"]["data"] == {"n": total}
        assert final["revision"] == 1 + total
        # Each lock-step round: all processes wrote on one revision, exactly one applied.
        assert sum(w.lockstep_conflicts for w in workers) == LOCKSTEP_ROUNDS * (PROCESSES - 1)
        board = await call_ok(client, "get_state", {"name": "board"})
        expected = {f"p{w}-{i}": i for w in range(PROCESSES) for i in range(PATCHES_PER_PROCESS)}
        assert board["state"]["data"] == expected
        assert board["revision"] == 1 + PROCESSES * PATCHES_PER_PROCESS

        # Every retained step of the counter, newest first, until history retention (a 'compacted' error).
        retained = 0
        for revision in range(total + 1, 0, -1):
            past = await client.call_tool("get_state", {"name": "counter", "revision": revision})
            if past.is_error:
                assert "compacted" in result_text(past), f"revision {revision}: {result_text(past)}"
                break
            assert past.structured_content is not None
            assert past.structured_content["state"]["data"] == {"n": revision - 1}, f"revision {revision}"
            retained += 1
        assert retained == _retained(total + 1), f"{retained} revisions retained at revision {total + 1}"

    # Exactly one process created the counter; the others got it back (if_exists='return').
    assert sorted(w.created for w in workers) == [False] * (PROCESSES - 1) + [True]
    for worker in workers:
        revisions = [got for _, got in worker.acknowledged]
        assert revisions == sorted(revisions), f"process {worker.index}: revisions went back"
        assert worker.revisions_read == sorted(worker.revisions_read), f"process {worker.index}: read went back"

    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def _retained(current: int, keep: int = 100, every: int = 10) -> int:
    """Revisions history retention keeps at ``current``: pruned to the last ``keep`` at every
    ``every``-th revision (groundhog_mcp/store/base.py ``Retention``), so ``keep`` plus the writes since."""
    last_prune = current - current % every
    return current - max(last_prune - keep, 0)
