"""kill -9 during a stream of acknowledged writes, again and again: nothing acknowledged is lost.

The server runs with the default ``synchronous=FULL``: once a write is acknowledged it is on
disk. Each round starts the real console script, streams CAS writes over raw JSON-RPC
(the SDK client cannot be SIGKILLed mid-request), and kills it after a random number of
acknowledgements, often with one more write in flight. After every restart each acknowledged
revision must read back exactly; at the end the SQLite file must be intact.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import RawServer

pytestmark = pytest.mark.e2e

ROUNDS = 8
MAX_ACKS_PER_ROUND = 10
# Rounds * (acks + one in-flight write) + the registration stays below the default history
# retention (keep_revisions=100), so every acknowledged revision must still be readable.
assert ROUNDS * (MAX_ACKS_PER_ROUND + 1) + 1 < 100


@dataclass(frozen=True)
class Ack:
    revision: int
    sequence: int
    data: dict[str, Any]


def _write_data(round_number: int, index: int) -> dict[str, Any]:
    return {"round": round_number, "index": index, "token": uuid.uuid4().hex, "items": list(range(index + 1))}


async def _write_in_flight_then_kill(
    server: RawServer, rng: random.Random, round_number: int, current: int
) -> tuple[Ack | None, Ack | None]:
    """SIGKILL the server at a random point around one more write.

    Usually the write is sent between a few pipelined reads and the kill comes after a random
    number of their answers: before the server reads the write, while it commits, after the
    commit but before the answer, or after it. Returns ``(in_flight, acknowledged)``: the
    write if it was sent but not answered, or its acknowledgement if the answer arrived.
    """
    if rng.random() < 0.2:
        server.kill()
        assert await server.wait() == -9
        return None, None
    data = _write_data(round_number, -1)
    reads_before, reads_after = rng.randint(0, 3), rng.randint(0, 3)
    read_ids = {await server.send_tool_call("get_state", {"name": "crash"}) for _ in range(reads_before)}
    write_id = await server.send_tool_call(
        "update_state", {"name": "crash", "data": data, "expected_revision": current}
    )
    read_ids |= {await server.send_tool_call("get_state", {"name": "crash"}) for _ in range(reads_after)}
    pending = Ack(current + 1, 0, data)
    acknowledged: Ack | None = None

    def take(message: dict[str, Any]) -> None:
        nonlocal acknowledged
        if message.get("id") == write_id:
            result = message["result"]
            assert not result.get("isError"), f"the in-flight write failed: {result}"
            structured = result["structuredContent"]
            assert structured["revision"] == pending.revision
            acknowledged = Ack(pending.revision, structured["sequence"], data)

    answers_before_kill = rng.randint(0, len(read_ids))
    answered = 0
    while answered < answers_before_kill:
        message = await server.receive()
        assert message is not None, "the server exited before it was killed"
        take(message)
        answered += message.get("id") in read_ids
    server.kill()
    assert await server.wait() == -9
    # Whatever the server wrote to the pipe before dying was delivered, so it counts as answered.
    while (message := await server.receive()) is not None:
        take(message)
    return (pending if acknowledged is None else None), acknowledged


async def _verify_acknowledged(server: RawServer, acks: list[Ack], in_flight: Ack | None, seed: int) -> int:
    """Every acknowledged revision reads back exactly; return the current revision."""
    current = await server.call_ok("get_state", {"name": "crash"})
    last = acks[-1]
    assert current["revision"] >= last.revision, (
        f"seed {seed}: revision went back from acknowledged {last.revision} to {current['revision']}"
    )
    if current["revision"] > last.revision:
        # Only the write in flight at the kill may have committed unacknowledged, and whole.
        assert in_flight is not None and current["revision"] == in_flight.revision, (
            f"seed {seed}: revision {current['revision']} appeared but only {last.revision} was acknowledged"
        )
        assert current["state"]["data"] == in_flight.data, f"seed {seed}: the in-flight write committed partly"
    else:
        assert current["state"]["data"] == last.data
    for ack in acks:
        past = await server.call_ok("get_state", {"name": "crash", "revision": ack.revision})
        assert past["state"]["data"] == ack.data, f"seed {seed}: acknowledged revision {ack.revision} changed"
    return int(current["revision"])


async def test_kill_9_loses_no_acknowledged_write(database: Path, raw_env: dict[str, str], tmp_path: Path) -> None:
    # The kill timing is a race either way; the seed replays the choices (GROUNDHOG_E2E_CRASH_SEED=...).
    seed = int(os.environ.get("GROUNDHOG_E2E_CRASH_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    print(f"\ncrash test seed {seed}")
    acks: list[Ack] = []
    in_flight: Ack | None = None
    context_id = ""
    outcomes = {"idle": 0, "acknowledged": 0, "committed unacknowledged": 0, "not committed": 0}

    for round_number in range(ROUNDS + 1):
        server = await RawServer.start(database, env=raw_env, stderr_path=tmp_path / f"round-{round_number}.stderr")
        try:
            await server.initialize()
            if round_number == 0:
                data = _write_data(0, 0)
                registered = await server.call_ok("register_context", {"name": "crash", "state": {"data": data}})
                context_id = registered["id"]
                acks.append(Ack(registered["revision"], registered["sequence"], data))
                current = registered["revision"]
            else:
                current = await _verify_acknowledged(server, acks, in_flight, seed)
                if in_flight is not None:
                    outcomes["committed unacknowledged" if current == in_flight.revision else "not committed"] += 1
            if round_number == ROUNDS:
                assert await server.close() == 0, "the server did not exit cleanly when stdin closed"
                break

            in_flight = None
            for index in range(rng.randint(1, MAX_ACKS_PER_ROUND)):
                data = _write_data(round_number, index)
                result = await server.call_ok(
                    "update_state", {"name": "crash", "data": data, "expected_revision": current}
                )
                assert result["revision"] == current + 1
                assert result["sequence"] > acks[-1].sequence, f"seed {seed}: sequence did not increase"
                acks.append(Ack(result["revision"], result["sequence"], data))
                current = result["revision"]
            in_flight, acked = await _write_in_flight_then_kill(server, rng, round_number, current)
            if in_flight is None and acked is None:
                outcomes["idle"] += 1
            if acked is not None:
                outcomes["acknowledged"] += 1
                assert acked.sequence > acks[-1].sequence, f"seed {seed}: sequence did not increase"
                acks.append(acked)
        finally:
            await server.ensure_dead()

    print(f"{len(acks)} acknowledged revisions over {ROUNDS} kills; the write at each kill: {outcomes}")
    with contextlib.closing(sqlite3.connect(database)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        duplicates = db.execute(
            "SELECT context_id, revision, count(*) FROM changes GROUP BY context_id, revision HAVING count(*) > 1"
        ).fetchall()
        assert duplicates == [], f"seed {seed}: duplicated (context_id, revision) in changes"
        rows = db.execute(
            "SELECT sequence, revision FROM changes WHERE context_id = ? ORDER BY sequence", (context_id,)
        )
        sequences, revisions = zip(*rows.fetchall(), strict=True)
    assert all(a < b for a, b in itertools.pairwise(sequences)), "sequences do not strictly increase"
    # One change per committed write, in commit order: revisions 1..current with no gap.
    assert list(revisions) == list(range(1, len(revisions) + 1)), f"seed {seed}: revisions {revisions}"
    assert revisions[-1] >= acks[-1].revision
    acked_sequences = {ack.revision: ack.sequence for ack in acks}
    by_revision = dict(zip(revisions, sequences, strict=True))
    for revision, sequence in acked_sequences.items():
        assert by_revision[revision] == sequence, f"seed {seed}: revision {revision} has another sequence on disk"
