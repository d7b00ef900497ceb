"""A hostile tenant against the work budget (issue 12, item 2), over real HTTP.

``groundhog-mcp serve`` runs as a subprocess on a loopback port with two tokens in two
namespaces. Tenant A sends one kind of hostile request again and again while tenant B reads its
own context in a loop and records each ``get_state`` latency. For every case B's p99 must stay
under 200 ms (the bound the issue sets), and A's answers must be bounded and data-free.

The cases: a regex that backtracks exponentially on Python's ``re`` (through ``validate_state``
and through ``update_state`` on a registered schema), a state-format migration that doubles the
data at every step, and errors about a 250 KB state (a missing ``path``, a schema violation).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client

from tests.reliability.broken_plugin import Build
from tests.server.test_http import Launcher, ServerProcess, connect, ok, text_of

pytestmark = pytest.mark.e2e

B_P99_BOUND_MS = 200.0  # issue 12: another tenant's get_state stays under 200 ms p99
# Each case keeps attacking at least this long, so B takes a few hundred samples under attack and
# its p99 is not just the one sample a busy shared machine delays.
ATTACK_SECONDS = 2.5
MIN_ROUNDS = 3
MAX_ERROR_CHARS = 1024 + len("Error executing tool update_state: ")

EVIL_PATTERN = "^(a+)+$"
EVIL_TEXT = "a" * 24 + "!"  # ~2^24 backtracking steps on Python's re; linear on RE2
BIG_MARKER = "Q7x"  # the 250 KB state is made of this, so a quoted fragment is easy to spot
BIG_BLOB = BIG_MARKER * (250_000 // len(BIG_MARKER))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    launcher = Launcher(tmp_path_factory.mktemp("hostile"))
    tokens = {"A": launcher.tokens.create("A", "team-x")[1], "B": launcher.tokens.create("B", "team-y")[1]}
    server = launcher.start("http")
    try:
        yield server, tokens
    finally:
        launcher.close()


@pytest.fixture
async def clients(
    served: tuple[ServerProcess, dict[str, str]], build: Build, tmp_path: Path
) -> AsyncGenerator[tuple[Client, Client]]:
    server, tokens = served
    async with AsyncExitStack() as stack:
        if build.broken:  # a broken variant (tests/reliability/broken_build.py) runs its own server
            launcher = Launcher(tmp_path)
            stack.callback(launcher.close)
            tokens = {"A": launcher.tokens.create("A", "team-x")[1], "B": launcher.tokens.create("B", "team-y")[1]}
            server = launcher.start("http")
        a = await stack.enter_async_context(connect(server.url, tokens["A"]))
        b = await stack.enter_async_context(connect(server.url, tokens["B"]))
        state = {"data": {"n": 1, "notes": ["x" * 100] * 50}}
        await ok(b, "register_context", name="mine", state=state, if_exists="return")
        yield a, b


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def _under_attack(b: Client, attack: Callable[[], Awaitable[Any]]) -> tuple[list[float], list[Any]]:
    """Run ``attack`` repeatedly (at least MIN_ROUNDS times and ATTACK_SECONDS long) while B reads
    its own context in a loop; B's latencies in ms, and what each attack returned."""
    latencies: list[float] = []
    answers: list[Any] = []
    done = anyio.Event()

    async def attacker() -> None:
        started = time.perf_counter()
        try:
            while len(answers) < MIN_ROUNDS or time.perf_counter() - started < ATTACK_SECONDS:
                answers.append(await attack())
        finally:
            done.set()

    async def reader() -> None:
        while not done.is_set():
            started = time.perf_counter()
            state = await ok(b, "get_state", name="mine")
            latencies.append((time.perf_counter() - started) * 1000)
            assert state["state"]["data"]["n"] == 1

    async with anyio.create_task_group() as group:
        group.start_soon(attacker)
        group.start_soon(reader)
    return latencies, answers


def _report(case: str, latencies: list[float]) -> tuple[float, float]:
    p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    print(f"\n{case}: B get_state n={len(latencies)} p50={p50:.1f} ms p99={p99:.1f} ms max={max(latencies):.1f} ms")
    return p50, p99


async def test_control_b_latency_while_a_reads_its_own_context(clients: tuple[Client, Client]) -> None:
    """The same loop with a harmless A, for comparison: what this machine gives without an attack."""
    a, b = clients
    await ok(a, "register_context", name="plain", state={"data": {"n": 1}}, if_exists="return")

    async def attack() -> Any:
        return await ok(a, "get_state", name="plain")

    latencies, answers = await _under_attack(b, attack)
    _report("control (no attack)", latencies)
    assert all(answer["state"]["data"] == {"n": 1} for answer in answers)


def _assert_bounded(text: str) -> None:
    assert len(text) <= MAX_ERROR_CHARS, len(text)
    assert BIG_MARKER * 3 not in text  # no stretch of the state's data is quoted


async def _call(client: Client, tool: str, **arguments: Any) -> tuple[bool, str]:
    """``(is_error, text)`` of a tool call; what it means is asserted after B's latencies."""
    result = await client.call_tool(tool, arguments)
    return result.is_error, text_of(result)


@pytest.mark.broken_build("backtracking_patterns", match=r"B's p99")
async def test_backtracking_pattern_via_validate_state(clients: tuple[Client, Client]) -> None:
    a, b = clients
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": EVIL_PATTERN}}}
    await ok(a, "register_context", name="evil-v", json_schema=schema)

    async def attack() -> Any:
        return await ok(a, "validate_state", name="evil-v", data={"s": EVIL_TEXT})

    latencies, answers = await _under_attack(b, attack)
    _, p99 = _report("pattern via validate_state", latencies)
    assert p99 < B_P99_BOUND_MS, f"B's p99 {p99:.0f} ms while A's pattern ran (bound {B_P99_BOUND_MS} ms)"
    for result in answers:
        assert result["valid"] is False
        assert [issue["pointer"] for issue in result["errors"]] == ["/data/s"]


async def test_backtracking_pattern_properties_via_update_state(clients: tuple[Client, Client]) -> None:
    a, b = clients
    schema = {"type": "object", "patternProperties": {EVIL_PATTERN: {"type": "integer"}}, "additionalProperties": False}
    await ok(a, "register_context", name="evil-u", json_schema=schema, state={"data": {"aaa": 1}})

    async def attack() -> Any:
        return await _call(a, "update_state", name="evil-u", data={EVIL_TEXT: 1})

    latencies, answers = await _under_attack(b, attack)
    _, p99 = _report("patternProperties via update_state", latencies)
    assert p99 < B_P99_BOUND_MS
    for is_error, text in answers:
        assert is_error and "is not allowed by the schema (additionalProperties is false)" in text
        _assert_bounded(text)
    assert (await ok(a, "get_state", name="evil-u"))["revision"] == 1  # nothing written


def _doubling_format(steps: int, patch: Callable[[int], list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "version": f"{steps + 1}.0.0",
        "migrations": [{"from": f"{i}.0.0", "to": f"{i + 1}.0.0", "patch": patch(i)} for i in range(1, steps + 1)],
    }


async def test_exploding_migration_is_refused_at_registration(clients: tuple[Client, Client]) -> None:
    a, b = clients
    # Copying an array into itself: the empty sample has no array, the example state has one.
    array_copy = _doubling_format(16, lambda i: [{"op": "copy", "from": "/d", "path": "/d/-"}])
    old = {"data": {"d": ["y" * 200]}, "version": "1.0.0"}
    attempts = iter(range(1000))

    async def attack() -> Any:
        name = f"boom-{next(attempts)}"
        registered = await _call(a, "register_context", name=name, state_format=array_copy, state=old)
        if registered[0]:
            return registered
        return await _call(a, "get_state", name=name)  # reads upcast the 210-byte example 16 times

    latencies, answers = await _under_attack(b, attack)
    _, p99 = _report("exploding migration", latencies)
    assert p99 < B_P99_BOUND_MS
    for is_error, text in answers:
        assert is_error, text[:300]
        assert "settings.state_format.migrations: the chain from 1.0.0 grows a 210-byte data object past" in text
        _assert_bounded(text)
    # Copying the whole data into a new member of itself at every step: from {} it doubles each time.
    root_copy = _doubling_format(20, lambda i: [{"op": "copy", "from": "", "path": f"/k{i}"}])
    is_error, text = await _call(a, "register_context", name="boom-root", state_format=root_copy)
    assert is_error and "the chain from 1.0.0 grows a 2-byte data object past 16512 bytes" in text, text[:300]
    assert (await ok(a, "list_contexts", prefix="boom"))["contexts"] == []  # nothing registered


async def test_errors_about_a_large_state_are_short_and_quote_no_data(clients: tuple[Client, Client]) -> None:
    a, b = clients
    schema = {"type": "object", "properties": {"count": {"type": "integer"}}}
    await ok(a, "register_context", name="big", json_schema=schema, state={"data": {"blob": BIG_BLOB, "count": 1}})

    async def attack() -> Any:
        missing = await _call(a, "get_state", name="big", path="/blob/missing")
        broken = await _call(a, "update_state", name="big", merge_patch={"count": BIG_BLOB})
        return missing, broken

    latencies, answers = await _under_attack(b, attack)
    _, p99 = _report("errors about a 250 KB state", latencies)
    longest = max(len(text) for pair in answers for _, text in pair)
    print(f"longest error: {longest} characters")
    assert p99 < B_P99_BOUND_MS
    for (missing_error, missing), (broken_error, broken) in answers:
        assert missing_error and "path: '/blob/missing' does not exist in the state" in missing
        assert broken_error and "state.data.count: must be of type 'integer' (got a string)" in broken
        _assert_bounded(missing)
        _assert_bounded(broken)
    assert (await ok(a, "get_state", name="big"))["revision"] == 1
