"""Exactly-once events across kill -9: a retried ``idempotency_key`` never applies twice.

Each round pipelines a burst of ``emit_event`` calls (each with a fresh idempotency key; the
handler appends the key to ``/seen``) and SIGKILLs the server at a random moment of the burst.
After the restart the client does what a real one does — it retries every key of the burst,
answered or not. Then every key sent so far is in ``/seen`` exactly once, and a retry of a key
that was answered before the kill reports ``duplicate: true`` with the revision of the first
answer.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import RawServer
from tests.reliability.battery import scaled, start_raw

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

ROUNDS = scaled(6, 60)
MAX_BURST = 25
EVENT_LATENCY_S = 0.004  # rough; only spreads the kill over the burst


async def _start(database: Path, env: dict[str, str], stderr_path: Path) -> RawServer:
    server = await start_raw(database, env=env, stderr_path=stderr_path)
    await server.initialize()
    tools = {t["name"] for t in (await server.request("tools/list"))["tools"]}
    if "emit_event" not in tools:
        await server.ensure_dead()
        pytest.skip("this build has no emit_event tool")
    return server


async def _burst_then_kill(server: RawServer, keys: list[str], rng: random.Random) -> dict[str, dict[str, Any]]:
    """Send one emit_event per key without waiting, kill -9 somewhere in the burst; return the answers."""
    ids: dict[int, str] = {}
    for key in keys:
        request_id = await server.send_tool_call(
            "emit_event", {"name": "ledger", "type": "seen", "payload": {"key": key}, "idempotency_key": key}
        )
        ids[request_id] = key
    asyncio.get_running_loop().call_later(rng.uniform(0, len(keys) * EVENT_LATENCY_S), server.kill)
    answers: dict[str, dict[str, Any]] = {}
    while (message := await server.receive()) is not None:
        if message.get("id") in ids:
            result = message["result"]
            assert not result.get("isError"), f"emit_event failed: {result}"
            answers[ids[message["id"]]] = result["structuredContent"]
    assert await server.wait() == -9
    return answers


async def test_retried_events_apply_exactly_once_across_kill_9(
    database: Path, raw_env: dict[str, str], tmp_path: Path
) -> None:
    seed = int(os.environ.get("GROUNDHOG_CRASH_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    sent: list[str] = []
    answered_before_kill = 0
    server = await _start(database, raw_env, tmp_path / "events-0.stderr")
    try:
        await server.call_ok(
            "register_context",
            {
                "name": "ledger",
                "state": {"data": {"seen": []}},
                "event_handlers": {"seen": {"action": "append", "path": "/seen", "value_from": "/key"}},
            },
        )
        for round_number in range(1, ROUNDS + 1):
            keys = [f"r{round_number}-{uuid.uuid4().hex[:8]}" for _ in range(rng.randint(1, MAX_BURST))]
            sent += keys
            answers = await _burst_then_kill(server, keys, rng)
            answered_before_kill += len(answers)
            await server.ensure_dead()

            server = await _start(database, raw_env, tmp_path / f"events-{round_number}.stderr")
            for key in keys:  # the client retries the whole burst with the same keys
                retry = await server.call_ok(
                    "emit_event", {"name": "ledger", "type": "seen", "payload": {"key": key}, "idempotency_key": key}
                )
                if key in answers:
                    assert retry["duplicate"], f"seed {seed}: answered event {key} applied again on retry"
                    assert retry["revision"] == answers[key]["revision"], (
                        f"seed {seed}: the retry of {key} reports revision {retry['revision']}, "
                        f"the first answer said {answers[key]['revision']}"
                    )
            seen = (await server.call_ok("get_state", {"name": "ledger", "path": "/seen"}))["value"]
            assert len(seen) == len(set(seen)), f"seed {seed}: an event applied twice: {len(seen) - len(set(seen))}"
            assert sorted(seen) == sorted(sent), f"seed {seed}: applied {len(seen)} events, {len(sent)} were sent"
        assert await server.close() == 0
    finally:
        await server.ensure_dead()
    print(
        f"\nexactly-once events: seed {seed}: {ROUNDS} kills, {len(sent)} events sent, "
        f"{answered_before_kill} answered before a kill, all applied once after retries"
    )
