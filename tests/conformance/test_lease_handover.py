"""The lease's hand-over, on every backend: the next waiter hears of the release at once, not at
its heartbeat retry nor at its process's usual change-feed poll.

Each test makes the slow paths very slow (the waiter's heartbeat retry and the feed's poll both
30 s) and asserts the waiter got the lease long before them: what wakes it is the release
(in-process: the direct wake; another instance: the feed polled every few milliseconds while a
waiter of its process is next in line, or PostgreSQL's ``NOTIFY``). And the faster poll is
bounded: only while a waiter of that process is next in line, one rate however many wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from groundhog_mcp import StateManager
from groundhog_mcp.models import Principal
from groundhog_mcp.service import leases

from .conftest import Backend

SLOW = 30.0  # the heartbeat retry and the usual poll: a waiter woken by either fails these tests
WITHIN = 10.0  # a third of SLOW: the waiter must have the lease by then


@pytest.fixture(autouse=True)
def slow_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leases, "WAITER_HEARTBEAT_SECONDS", SLOW)


async def _opened(backend: Backend, principal: Principal | None = None) -> StateManager:
    opened = StateManager(backend.store(), poll_interval=SLOW, principal=principal)
    await opened.start()
    return opened


@pytest.fixture
async def slow(backend: Backend) -> AsyncGenerator[StateManager]:
    """An instance whose change feed polls every 30 s (unless a waiter hurries it)."""
    opened = await _opened(backend)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def slow_other(backend: Backend) -> AsyncGenerator[StateManager]:
    """A second such instance on the same database (another process, another PostgreSQL instance)."""
    opened = await _opened(backend)
    try:
        yield opened
    finally:
        await opened.close()


async def _waiting(backend: Backend) -> int:
    return int((await backend.sql("SELECT count(*) FROM lease_waiters"))[0][0])


async def _until_waiting(backend: Backend, count: int) -> None:
    async with asyncio.timeout(WITHIN):
        while await _waiting(backend) != count:  # noqa: ASYNC110 - another instance writes the line
            await asyncio.sleep(0.01)


async def test_a_release_by_another_instance_wakes_the_next_waiter_before_its_retry(
    backend: Backend, slow: StateManager, slow_other: StateManager
) -> None:
    await slow.register("plan")
    held = await slow.take_lease("plan", ttl_seconds=60, holder="holder")
    waiter = asyncio.create_task(slow_other.take_lease("plan", ttl_seconds=60, wait_seconds=SLOW * 1.5, holder="w"))
    await _until_waiting(backend, 1)
    await asyncio.sleep(0.05)  # the waiter is past its try, waiting to be woken
    assert not waiter.done()
    await slow.release_lease("plan", held.lease.token)
    async with asyncio.timeout(WITHIN):  # neither the 30 s retry nor the 30 s poll
        grant = await waiter
    assert grant.lease.holder == "local/w" and grant.lease.token == held.lease.token + 1
    # Served: the waiter's process polls at its usual rate again.
    assert not slow_other.feed.hurried


async def test_a_release_in_the_same_process_wakes_its_waiter_directly(
    backend: Backend, slow: StateManager, slow_other: StateManager
) -> None:
    await slow.register("plan")
    held = await slow.take_lease("plan", ttl_seconds=60, holder="holder")
    waiter = asyncio.create_task(slow.take_lease("plan", ttl_seconds=60, wait_seconds=SLOW * 1.5, holder="w"))
    await _until_waiting(backend, 1)
    await asyncio.sleep(0.05)
    # Its change feed stalled (on a busy database, say) and another instance's change came before
    # the release: the release's change is not published at once; the release itself wakes the waiter.
    await slow.feed.stop()
    await slow_other.register("elsewhere")
    await slow.release_lease("plan", held.lease.token)
    async with asyncio.timeout(WITHIN):
        grant = await waiter
    assert grant.lease.holder == "local/w"


async def test_a_write_that_releases_wakes_the_waiter_in_the_same_process(
    backend: Backend, slow: StateManager, slow_other: StateManager
) -> None:
    await slow.register("plan")
    held = await slow.take_lease("plan", ttl_seconds=60, holder="holder")
    waiter = asyncio.create_task(slow.take_lease("plan", ttl_seconds=60, wait_seconds=SLOW * 1.5, holder="w"))
    await _until_waiting(backend, 1)
    await asyncio.sleep(0.05)
    await slow.feed.stop()
    await slow_other.register("elsewhere")
    writer = slow.with_lease(held.lease.token)
    await writer.update("plan", data={"step": 1})
    await slow.release_lease("plan", held.lease.token)  # what update_state's release_lease does next
    async with asyncio.timeout(WITHIN):
        grant = await waiter
    assert grant.lease.token == held.lease.token + 1


async def test_only_the_process_of_the_next_waiter_polls_faster(
    backend: Backend, slow: StateManager, slow_other: StateManager
) -> None:
    await slow.register("plan")
    held = await slow.take_lease("plan", ttl_seconds=60, holder="holder")
    first = asyncio.create_task(slow_other.take_lease("plan", ttl_seconds=60, wait_seconds=SLOW * 1.5, holder="a"))
    await _until_waiting(backend, 1)
    second = asyncio.create_task(slow.take_lease("plan", ttl_seconds=60, wait_seconds=SLOW * 1.5, holder="b"))
    await _until_waiting(backend, 2)
    await asyncio.sleep(0.05)
    assert slow_other.feed.hurried  # its waiter is next
    assert not slow.feed.hurried  # its waiter is behind one, the lease held: no faster poll
    await slow.release_lease("plan", held.lease.token)
    async with asyncio.timeout(WITHIN):
        grant = await first
    await slow_other.release_lease("plan", grant.lease.token)  # another instance's release
    async with asyncio.timeout(WITHIN):
        await second
    assert not slow.feed.hurried and not slow_other.feed.hurried


async def test_many_waiters_of_a_namespace_hurry_their_process_at_one_rate(
    backend: Backend, slow: StateManager
) -> None:
    """A namespace that fills its lines costs its process one poll every 5 ms (a cheap check on
    SQLite), however many wait; nothing polls faster once they are gone."""
    if backend.kind.startswith("postgres"):
        pytest.skip("PostgreSQL's NOTIFY wakes the feed: the poll is not hurried there")
    names = [f"plan{i}" for i in range(8)]
    for name in names:
        await slow.register(name)
        await slow.take_lease(name, ttl_seconds=60, holder="holder")
    waiters = [
        asyncio.create_task(slow.take_lease(name, ttl_seconds=60, wait_seconds=SLOW * 1.5, holder="w"))
        for name in names
    ]
    await _until_waiting(backend, len(names))
    before, started = slow.feed.polls, asyncio.get_running_loop().time()
    await asyncio.sleep(0.5)
    polls, elapsed = slow.feed.polls - before, asyncio.get_running_loop().time() - started
    assert slow.feed.hurried
    # One rate for the process: at most one poll per 5 ms (and a few for the waiters' own
    # commits), not one per waiter; under load there are fewer, never more.
    assert polls <= elapsed / slow.feed.hurried_interval + 10, polls
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert not slow.feed.hurried
    await _until_waiting(backend, 0)
    before = slow.feed.polls
    await asyncio.sleep(0.3)
    assert slow.feed.polls - before <= 1  # back to the 30 s poll
