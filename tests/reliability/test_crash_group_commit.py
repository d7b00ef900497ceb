"""kill -9 while batches of writes commit together (group commit, store/sqlite_writer.py).

Each round keeps one compare-and-set ``update_state`` in flight per context (``CONTEXTS``
contexts, so several writes share a transaction) and SIGKILLs the server, in one of two ways:

- **drained**: the client stops sending after a few answers per context, reads every answer
  still due, and kills with nothing in flight — a batch answered before its ``COMMIT`` is lost
  exactly there;
- **mid-batch**: the kill lands at a random moment with writes in flight.

After each restart: every acknowledged revision reads back with its exact data; each context
is at its last acknowledged revision or at the one write that was in flight for it, whole; on
disk the change sequences run 1..N without a gap (a batch is in the file whole or not at all:
no unacknowledged half-batch) and every acknowledged sequence is the one on disk.
``[broken-ack_before_commit]`` (batches answered before their COMMIT) must lose a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import RawServer
from tests.reliability.battery import scaled, start_initialized
from tests.reliability.crash_loop import AcknowledgedWriteLost

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

CONTEXTS = [f"batch-{i}" for i in range(8)]
ROUNDS = scaled(6, 40)  # every other one drained; history retention (100 revisions) is never reached at CI size
MAX_WRITES_PER_CONTEXT = 6
BURST_S = 0.08  # the mid-batch kill lands within this much of the first write


class _Client:
    """What the client knows: per context, the acknowledged (revision, sequence, data), and the
    write in flight."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.acks: dict[str, list[tuple[int, int, dict[str, Any]]]] = {name: [] for name in CONTEXTS}
        self.in_flight: dict[str, tuple[int, dict[str, Any]]] = {}
        self.acknowledged = 0
        self.checked = {name: 0 for name in CONTEXTS}  # acks read back after an earlier restart

    def last(self, name: str) -> tuple[int, int, dict[str, Any]]:
        return self.acks[name][-1]


async def _write_round(server: RawServer, client: _Client, rng: random.Random, *, drained: bool) -> None:
    quota = {name: rng.randint(1, MAX_WRITES_PER_CONTEXT) for name in CONTEXTS}
    requests: dict[int, str] = {}

    async def send(name: str) -> None:
        revision = client.last(name)[0]
        data = {"revision": revision + 1, "token": uuid.uuid4().hex}
        arguments = {"name": name, "data": data, "expected_revision": revision}
        try:
            requests[await server.send_tool_call("update_state", arguments)] = name
        except (BrokenPipeError, ConnectionResetError):
            return  # the kill landed first: never read by the server
        client.in_flight[name] = (revision + 1, data)
        quota[name] -= 1

    for name in CONTEXTS:
        await send(name)
    if not drained:
        asyncio.get_running_loop().call_later(rng.uniform(0, BURST_S), server.kill)
    while requests and (message := await server.receive()) is not None:
        name = requests.pop(message.get("id"), None)  # type: ignore[arg-type]
        if name is None:
            continue  # a notification
        result = message["result"]
        assert not result.get("isError"), f"seed {client.seed}: update_state failed: {result}"
        revision, data = client.in_flight.pop(name)
        structured = result["structuredContent"]
        assert structured["revision"] == revision
        client.acks[name].append((revision, structured["sequence"], data))
        client.acknowledged += 1
        if quota[name] > 0:
            await send(name)
    if drained:
        assert not client.in_flight
        server.kill()  # every answer read, nothing in flight
    assert await server.wait() == -9


async def _verify(server: RawServer, client: _Client, database: Path) -> int:
    """Check everything acknowledged; return how many in-flight writes had committed."""
    seed = client.seed
    committed: dict[str, tuple[int, dict[str, Any]]] = {}
    for name in CONTEXTS:
        revision, _, data = client.last(name)
        current = await server.call_ok("get_state", {"name": name})
        if current["revision"] < revision:
            raise AcknowledgedWriteLost(
                f"seed {seed}: {name} is at revision {current['revision']}, revision {revision} was acknowledged"
            )
        pending = client.in_flight.pop(name, None)
        if current["revision"] > revision:
            assert pending is not None and current["revision"] == pending[0], (
                f"seed {seed}: {name} revision {current['revision']} appeared; acknowledged {revision}, "
                f"in flight {pending}"
            )
            assert current["state"]["data"] == pending[1], f"seed {seed}: the in-flight write to {name} is not whole"
            committed[name] = pending
        elif current["state"]["data"] != data:
            raise AcknowledgedWriteLost(f"seed {seed}: {name} revision {revision} does not hold the acknowledged data")
        # Revisions acknowledged since the last restart read back (the earlier ones were checked then).
        for acked, _, acked_data in client.acks[name][client.checked[name] : -1]:
            past = await server.call_ok("get_state", {"name": name, "revision": acked})
            if past["state"]["data"] != acked_data:
                raise AcknowledgedWriteLost(f"seed {seed}: acknowledged revision {acked} of {name} reads back changed")
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        sequences = [s for (s,) in db.execute("SELECT sequence FROM changes ORDER BY sequence")]
        assert sequences == list(range(1, len(sequences) + 1)), f"seed {seed}: a gap in the change feed"
        on_disk = {
            (name, revision): sequence
            for name, revision, sequence in db.execute(
                "SELECT name, revision, sequence FROM changes WHERE op <> 'register'"
            )
        }
    for name in CONTEXTS:
        for revision, sequence, _ in client.acks[name][1:]:
            if on_disk.get((name, revision)) != sequence:
                raise AcknowledgedWriteLost(
                    f"seed {seed}: {name} revision {revision} was acknowledged with sequence {sequence}, "
                    f"the file has {on_disk.get((name, revision))}"
                )
    for name, (revision, data) in committed.items():
        client.acks[name].append((revision, on_disk[(name, revision)], data))  # committed: now a fact
    for name in CONTEXTS:
        client.checked[name] = len(client.acks[name]) - 1
    return len(committed)


@pytest.mark.broken_build("ack_before_commit", fails_with=AcknowledgedWriteLost)
async def test_kill_9_during_group_commit_loses_no_acknowledged_write(
    database: Path, raw_env: dict[str, str], tmp_path: Path
) -> None:
    seed = int(os.environ.get("GROUNDHOG_CRASH_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    client = _Client(seed)
    committed_in_flight = 0
    server = await start_initialized(database, env=raw_env, stderr_path=tmp_path / "group-0.stderr")
    try:
        for name in CONTEXTS:
            result = await server.call_ok("register_context", {"name": name, "state": {"data": {"revision": 1}}})
            client.acks[name].append((result["revision"], result["sequence"], {"revision": 1}))
        for round_number in range(ROUNDS):
            await _write_round(server, client, rng, drained=round_number % 2 == 0)
            await server.ensure_dead()
            server = await start_initialized(
                database, env=raw_env, stderr_path=tmp_path / f"group-{round_number + 1}.stderr"
            )
            committed_in_flight += await _verify(server, client, database)
        assert await server.close() == 0
    finally:
        await server.ensure_dead()
    print(
        f"\ngroup commit crash: seed {seed}: {ROUNDS} kills, {client.acknowledged} acknowledged writes, none lost, "
        f"{committed_in_flight} in-flight writes committed whole"
    )
