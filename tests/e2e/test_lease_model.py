"""Model-based lease test: four agents in four processes take turns on one counter.

Each worker (tests/e2e/lease_worker.py) takes the lease (waiting in line), reads the counter,
sometimes stalls past its expiry, writes ``n + 1`` with its token and no compare-and-set, maybe
renews, and releases. Then the test reads the change feed and every revision back and checks:

- no lost increment: the counter equals the number of acknowledged writes, and each acknowledged
  write is one revision (only mutual exclusion can give this: the writes are unconditional);
- no stale write: every update was written with the newest token issued before it (the k-th
  ``lease_take`` on the feed issued token k), and a write whose holder stalled past its expiry
  was refused;
- never two holders: lease k+1 was taken only after lease k was released or had expired.

The checker is a pure function of the logs; it is also run on planted anomalies to show it fails.
Both backends: SQLite (four processes on one file) and PostgreSQL (four instances).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from groundhog_mcp import StateManager
from groundhog_mcp.models import Change, parse_timestamp
from groundhog_mcp.store import open_store
from tests.conformance.conftest import MakeBackend, make_backend  # noqa: F401 - the fixture

pytestmark = pytest.mark.e2e

WORKERS = 4
ITERATIONS = 10
NAME = "counter"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Observed:
    log: list[dict[str, Any]]  # every worker's records
    changes: list[Change]  # the context's change feed, in sequence order
    data: dict[int, dict[str, Any]]  # revision -> data


def violations(observed: Observed) -> list[str]:
    found: list[str] = []
    by_sequence = {c.sequence: c for c in observed.changes}
    writes = [r for r in observed.log if r["op"] == "write" and r["ok"]]
    final = max(observed.data)
    if observed.data[final].get("n", 0) != len(writes):
        found.append(f"lost increments: counter {observed.data[final].get('n')} after {len(writes)} writes")
    if len({w["revision"] for w in writes}) != len(writes):
        found.append("a revision was acknowledged to two writes")
    issued = 0
    for change in observed.changes:
        if change.op == "lease_take":
            issued += 1
        elif change.op == "update":
            token = observed.data[change.revision].get("token")
            if token != issued:
                found.append(f"revision {change.revision} written with token {token} while token {issued} was live")
    for write in writes:
        if observed.data[write["revision"]].get("token") != write["token"]:
            found.append(f"revision {write['revision']} does not hold the write acknowledged for it")
    # Never two holders: lease k+1 was taken after lease k ended (released, or expired).
    takes = {r["token"]: r for r in observed.log if r["op"] == "take" and r["ok"]}
    ends: dict[int, datetime] = {}
    for record in observed.log:
        if record["op"] in ("take", "renew") and record["ok"]:
            expiry = parse_timestamp(record["expires_at"])
            ends[record["token"]] = max(ends.get(record["token"], expiry), expiry)
    for record in observed.log:
        if record["op"] == "release" and record["ok"] and record["sequence"] is not None:
            released = by_sequence[record["sequence"]].timestamp
            ends[record["token"]] = min(ends[record["token"]], released)
    for token in sorted(takes):
        if token - 1 in takes:
            taken = by_sequence[takes[token]["sequence"]].timestamp
            if taken < ends[token - 1]:
                found.append(f"lease {token} was taken at {taken} while lease {token - 1} was held")
    return found


async def _run_workers(database: str, seed: int) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.e2e.lease_worker",
            database,
            NAME,
            str(seed + i),
            str(ITERATIONS),
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO,
            env=env,
        )
        for i in range(WORKERS)
    ]
    log: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(240):
            for process in processes:
                out, _ = await process.communicate()
                assert process.returncode == 0, f"worker failed: {out[-2000:]!r}"
                log += [json.loads(line) for line in out.decode().splitlines()]
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    return log


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_agents_in_several_processes_never_hold_together_nor_write_stale(
    make_backend: MakeBackend,  # noqa: F811
    kind: str,
) -> None:
    backend = await make_backend(kind)  # type: ignore[arg-type]
    seed = random.randrange(1_000_000)
    async with _manager(backend.database) as manager:
        await manager.register(NAME)
    log = await _run_workers(backend.database, seed)
    async with _manager(backend.database) as manager:
        changes: list[Change] = []
        while page := await manager.changes_after(changes[-1].sequence if changes else 0, limit=100):
            changes += page
        current = await manager.get(NAME)
        data = {r: (await manager.read(NAME, r))[2].data for r in range(1, current.revision + 1)}
    observed = Observed(log, [c for c in changes if c.name == NAME], data)
    writes = [r for r in log if r["op"] == "write"]
    assert sum(w["ok"] for w in writes) >= WORKERS, f"seed {seed}: too few writes got through: {writes}"
    assert any(not w["ok"] and w["stale"] for w in writes), f"seed {seed}: no stalled holder was fenced off"
    assert violations(observed) == [], f"seed {seed}"
    # The checker catches what it is there for.
    first_update = next(c for c in observed.changes if c.op == "update")
    held_on = max(r["token"] for r in log if r["op"] == "take" and r["ok"]) - 1  # lease k, then k+1 taken
    never_ending = [
        dict(r, expires_at="2999-01-01T00:00:00.000000Z") if r.get("token") == held_on and "expires_at" in r else r
        for r in log
        if not (r["op"] == "release" and r.get("token") == held_on)
    ]
    planted = {
        "an increment acknowledged twice": Observed(
            [*log, dict(next(w for w in writes if w["ok"]), revision=current.revision)], observed.changes, data
        ),
        "a write with a stale token": Observed(
            log, observed.changes, {**data, first_update.revision: {"n": 1, "token": 0}}
        ),
        "two holders at once": Observed(never_ending, observed.changes, data),
    }
    for anomaly, doctored in planted.items():
        assert violations(doctored), f"seed {seed}: the checker missed {anomaly}"


class _manager:
    """A StateManager on ``database`` for the test's own reads and writes."""

    def __init__(self, database: str) -> None:
        self.manager = StateManager(open_store(database))

    async def __aenter__(self) -> StateManager:
        await self.manager.start()
        return self.manager

    async def __aexit__(self, *exc: object) -> None:
        await self.manager.close()
