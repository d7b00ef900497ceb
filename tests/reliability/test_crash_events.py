"""Exactly-once events across kill -9: a retried ``idempotency_key`` never applies twice.

Each round sends ``emit_event`` calls (each with a fresh idempotency key; the handler appends the
key to ``/seen``) and SIGKILLs the server, in one of two windows:

- **right after an answer**: events are sent one at a time and the kill comes right after the
  answer to one of them was read, before the next request is sent. An event acknowledged before
  its COMMIT is lost exactly there. These rounds repeat until the window was hit
  ``WINDOW_KILLS`` times, and the count is asserted;
- **in a burst**: events are pipelined and the kill lands at a random moment of the burst, with
  requests in flight (each must be applied whole or not at all).

After the restart the client does what a real one does — it retries every key of the round,
answered or not. Then every key sent so far is in ``/seen`` exactly once, and a retry of a key
that was answered before the kill reports ``duplicate: true`` with the revision of the first
answer. ``[broken-ack_before_commit]`` and ``[broken-no_idempotency]`` must fail at that check.
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
from tests.reliability.battery import scaled, start_initialized

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

WINDOW_KILLS = scaled(3, 30)
BURST_KILLS = scaled(3, 30)
MAX_BURST = 25
EVENT_LATENCY_S = 0.004  # rough; only spreads the kill over the burst
_CAUGHT = r"answered event \S+ applied again on retry"


def _emit(key: str) -> dict[str, Any]:
    return {"name": "ledger", "type": "seen", "payload": {"key": key}, "idempotency_key": key}


async def _answer_then_kill(server: RawServer, keys: list[str], rng: random.Random) -> dict[str, dict[str, Any]]:
    """Send the events one at a time; kill -9 right after reading one answer, before sending the next."""
    answers: dict[str, dict[str, Any]] = {}
    for key in keys[: rng.randint(1, len(keys))]:
        answers[key] = await server.call_ok("emit_event", _emit(key))
    server.kill()
    assert await server.wait() == -9
    return answers


async def _burst_then_kill(server: RawServer, keys: list[str], rng: random.Random) -> dict[str, dict[str, Any]]:
    """Send one emit_event per key without waiting, kill -9 somewhere in the burst; return the answers."""
    ids: dict[int, str] = {}
    for key in keys:
        ids[await server.send_tool_call("emit_event", _emit(key))] = key
    asyncio.get_running_loop().call_later(rng.uniform(0, len(keys) * EVENT_LATENCY_S), server.kill)
    answers: dict[str, dict[str, Any]] = {}
    while (message := await server.receive()) is not None:
        if message.get("id") in ids:
            result = message["result"]
            assert not result.get("isError"), f"emit_event failed: {result}"
            answers[ids[message["id"]]] = result["structuredContent"]
    assert await server.wait() == -9
    return answers


@pytest.mark.broken_build("ack_before_commit", match=_CAUGHT)
@pytest.mark.broken_build("no_idempotency", match=_CAUGHT)
async def test_retried_events_apply_exactly_once_across_kill_9(
    database: Path, raw_env: dict[str, str], tmp_path: Path
) -> None:
    seed = int(os.environ.get("GROUNDHOG_CRASH_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    sent: list[str] = []
    answered_before_kill = window_hits = bursts = 0
    server = await start_initialized(database, env=raw_env, stderr_path=tmp_path / "events-0.stderr")
    try:
        await server.call_ok(
            "register_context",
            {
                "name": "ledger",
                "state": {"data": {"seen": []}},
                "event_handlers": {"seen": {"action": "append", "path": "/seen", "value_from": "/key"}},
            },
        )
        round_number = 0
        while window_hits < WINDOW_KILLS or bursts < BURST_KILLS:
            round_number += 1
            keys = [f"r{round_number}-{uuid.uuid4().hex[:8]}" for _ in range(rng.randint(1, MAX_BURST))]
            sent += keys
            # Odd rounds (the first one included) hit the after-answer window.
            if (round_number % 2 == 1 and window_hits < WINDOW_KILLS) or bursts >= BURST_KILLS:
                answers = await _answer_then_kill(server, keys, rng)
                window_hits += 1
            else:
                answers = await _burst_then_kill(server, keys, rng)
                bursts += 1
            answered_before_kill += len(answers)
            await server.ensure_dead()

            server = await start_initialized(
                database, env=raw_env, stderr_path=tmp_path / f"events-{round_number}.stderr"
            )
            for key in keys:  # the client retries the whole round with the same keys
                retry = await server.call_ok("emit_event", _emit(key))
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
        f"\nexactly-once events: seed {seed}: {window_hits} kills right after an answer, {bursts} in a burst, "
        f"{len(sent)} events sent, {answered_before_kill} answered before a kill, all applied once after retries"
    )
    assert (window_hits, bursts) == (WINDOW_KILLS, BURST_KILLS)
