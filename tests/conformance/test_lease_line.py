"""The lease's waiting line, on every backend: first come, first served across instances, a take
without waiting never jumps the line, a waiter that stopped waiting is skipped at its heartbeat
deadline and its row deleted at use, the line is bounded per context and per namespace, and one
namespace's waiters never delay another's lease.

The cross-process form (waiters in several processes, one killed -9 while it waits) is
tests/e2e/test_lease_line.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from groundhog_mcp import StateManager
from groundhog_mcp.errors import LeasedError, StoreBusyError
from groundhog_mcp.models import Principal, utcnow
from groundhog_mcp.service.validation import Limits
from groundhog_mcp.store import Store

from .conftest import Backend


async def waiting(backend: Backend, namespace: str | None = None) -> int:
    """Rows in the waiting line (of one namespace), live or not."""
    if namespace is None:
        rows = await backend.sql("SELECT count(*) FROM lease_waiters")
    else:
        rows = await backend.sql("SELECT count(*) FROM lease_waiters WHERE namespace = %s", (namespace,))
    return int(rows[0][0])


async def until(condition: Callable[[], Awaitable[bool]], what: str, seconds: float = 10) -> None:
    """Wait until ``condition`` holds, at most ``seconds``: a poll of the database, which another
    instance writes (no event of this process says so)."""
    for _ in range(int(seconds / 0.01)):
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {seconds:g} s: {what}")


async def test_waiters_of_two_instances_are_served_in_the_order_they_came(
    backend: Backend, manager: StateManager, other: StateManager
) -> None:
    await manager.register("plan")
    held = await manager.take_lease("plan", ttl_seconds=30, holder="first-holder")
    served: list[str] = []

    async def wait_in_line(instance: StateManager, label: str) -> None:
        grant = await instance.take_lease("plan", ttl_seconds=30, wait_seconds=30, holder=label)
        served.append(label)
        await instance.release_lease("plan", grant.lease.token)

    # Interleaved over the two instances: within each, and across them, the line is one.
    order = [(manager, "a1"), (other, "b1"), (manager, "a2"), (other, "b2"), (other, "b3"), (manager, "a3")]
    tasks = []
    for count, (instance, label) in enumerate(order, 1):
        tasks.append(asyncio.create_task(wait_in_line(instance, label)))
        await until(lambda n=count: _equals(waiting(backend), n), f"{label} queued")
    await manager.release_lease("plan", held.lease.token)
    async with asyncio.timeout(30):
        await asyncio.gather(*tasks)
    assert served == [label for _, label in order]
    assert await waiting(backend) == 0  # each left the line when it took the lease
    tokens = [c for c in await manager.changes_after(0) if c.op == "lease_take"]
    assert len(tokens) == 1 + len(order)


async def _equals(count: Awaitable[int], expected: int) -> bool:
    return await count == expected


async def test_a_take_without_waiting_never_jumps_the_line(backend: Backend, manager: StateManager) -> None:
    await manager.register("plan")
    store: Store = manager.store
    held = await manager.take_lease("plan", ttl_seconds=30, holder="a")
    later = utcnow() + timedelta(seconds=30)

    async def turn(place: int | None, holder: str):  # one try of a waiter, as the service makes it
        return await store.take_in_turn(
            "default",
            "plan",
            place=place,
            holder=holder,
            ttl_seconds=30,
            wait_until=later,
            actor="local",
            max_waiters=32,
            max_namespace_waiters=256,
        )

    first = await turn(None, "local/first")
    assert (first.grant, first.ahead, first.held is not None) == (None, 0, True)
    assert first.retry_at == held.lease.expires_at  # the holder's expiry moves the line
    second = await turn(None, "local/second")
    assert (second.grant, second.ahead) == (None, 1) and second.place is not None and first.place is not None
    assert second.place > first.place
    await manager.release_lease("plan", held.lease.token)
    # Free, but two came first: neither a take without waiting nor the second waiter may have it.
    with pytest.raises(LeasedError) as refused:
        await manager.take_lease("plan", holder="pushy")
    assert str(refused.value).startswith(
        "name: the lease of context 'plan' is free, but 2 agents waiting in line for it came first"
    )
    assert (refused.value.code, refused.value.retryable, refused.value.holder) == ("leased", True, None)
    again = await turn(second.place, "local/second")
    assert (again.grant, again.place, again.ahead, again.held) == (None, second.place, 1, None)
    got = await turn(first.place, "local/first")
    assert got.grant is not None and got.grant.lease.holder == "local/first" and got.place is None
    assert await waiting(backend) == 1
    await manager.release_lease("plan", got.grant.lease.token)
    mine = await turn(second.place, "local/second")
    assert mine.grant is not None and mine.grant.lease.token == got.grant.lease.token + 1
    assert await waiting(backend) == 0


async def test_a_waiter_that_stopped_waiting_is_skipped_at_its_deadline(
    backend: Backend, manager: StateManager
) -> None:
    await manager.register("plan")
    store: Store = manager.store
    held = await manager.take_lease("plan", ttl_seconds=30)
    # A waiter whose process died after one try: its heartbeat deadline (here its wait's end,
    # 0.5 s away) passes with nobody to push it.
    dead = await store.take_in_turn(
        "default",
        "plan",
        place=None,
        holder="local/dead",
        ttl_seconds=30,
        wait_until=utcnow() + timedelta(seconds=0.5),
        actor="local",
        max_waiters=32,
        max_namespace_waiters=256,
    )
    assert dead.place is not None
    await manager.release_lease("plan", held.lease.token)
    with pytest.raises(LeasedError, match="1 agent waiting in line for it came first"):
        await manager.take_lease("plan")
    # A live waiter behind it gets the lease once the dead one's deadline passes, no timer running.
    got = await manager.take_lease("plan", wait_seconds=10, holder="next")
    assert got.lease.holder == "local/next"
    assert await waiting(backend) == 0  # the dead one's row went at use
    await manager.release_lease("plan", got.lease.token)
    # One that gave up leaves the line at once.
    held = await manager.take_lease("plan", ttl_seconds=30)
    with pytest.raises(LeasedError, match=r"^name: context 'plan' is leased by 'local' until .*; waited 0.3 s$"):
        await manager.take_lease("plan", wait_seconds=0.3)
    assert await waiting(backend) == 0
    # So does one that is cancelled.
    task = asyncio.create_task(manager.take_lease("plan", wait_seconds=30))
    await until(lambda: _equals(waiting(backend), 1), "queued")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: _equals(waiting(backend), 0), "the cancelled waiter left")
    await manager.release_lease("plan", held.lease.token)
    assert (await manager.take_lease("plan")).lease.token == held.lease.token + 1


async def test_the_line_is_bounded_and_a_namespace_never_delays_another(
    backend: Backend, manager: StateManager
) -> None:
    limits = Limits(max_lease_waiters=2, max_lease_waiters_per_namespace=3)
    tenant = manager.with_principal(Principal(name="mallory", namespace="tenant-b"))
    manager.limits = limits
    tenant.limits = limits
    # The hostile tenant fills its lines: contexts of the same names as the other namespace's.
    for name in ("plan", "spare"):
        await tenant.register(name)
        await tenant.take_lease(name, ttl_seconds=30)
    flood = [asyncio.create_task(tenant.take_lease("plan", wait_seconds=30)) for _ in range(2)]
    await until(lambda: _equals(waiting(backend, "tenant-b"), 2), "the flood queued")
    with pytest.raises(StoreBusyError) as full:
        await tenant.take_lease("plan", wait_seconds=30)
    assert str(full.value).startswith(
        "wait_seconds: 2 agents waiting for the lease of context 'plan' already, the limit (max_lease_waiters 2)"
    )
    assert (full.value.code, full.value.retryable) == ("busy", True)
    flood.append(asyncio.create_task(tenant.take_lease("spare", wait_seconds=30)))
    await until(lambda: _equals(waiting(backend, "tenant-b"), 3), "the flood queued")
    await tenant.register("third")
    await tenant.take_lease("third", ttl_seconds=30)
    with pytest.raises(StoreBusyError, match=r"3 agents waiting in this namespace already, the limit "):
        await tenant.take_lease("third", wait_seconds=30)
    assert await waiting(backend, "tenant-b") == 3
    # The other namespace: its own "plan" is taken at once and its own line works as ever.
    await manager.register("plan")
    held = await manager.take_lease("plan", ttl_seconds=30)
    mine = []
    for count in (1, 2):
        mine.append(asyncio.create_task(manager.take_lease("plan", wait_seconds=30, holder=f"w{count}")))
        await until(lambda n=count: _equals(waiting(backend, "default"), n), "queued")
    await manager.release_lease("plan", held.lease.token)
    first = await asyncio.wait_for(mine[0], 10)
    await manager.release_lease("plan", first.lease.token)
    second = await asyncio.wait_for(mine[1], 10)
    assert (first.lease.holder, second.lease.holder) == ("local/w1", "local/w2")
    assert not any(task.done() for task in flood)  # still waiting: their leases are held
    for task in flood:
        task.cancel()
    await asyncio.gather(*flood, return_exceptions=True)
    await until(lambda: _equals(waiting(backend), 0), "the flood left the line")


async def test_a_waiter_that_stalled_past_its_deadline_comes_back_behind_everyone(
    backend: Backend, manager: StateManager
) -> None:
    await manager.register("plan")
    store: Store = manager.store
    held = await manager.take_lease("plan", ttl_seconds=30)

    async def turn(place: int | None, holder: str, seconds: float):
        return await store.take_in_turn(
            "default",
            "plan",
            place=place,
            holder=holder,
            ttl_seconds=30,
            wait_until=utcnow() + timedelta(seconds=seconds),
            actor="local",
            max_waiters=32,
            max_namespace_waiters=256,
        )

    stalled = await turn(None, "local/stalled", 0.3)  # its place lives 0.3 s unless it tries again
    live = await turn(None, "local/live", 30)
    assert stalled.place is not None and live.place is not None and live.ahead == 1
    await manager.release_lease("plan", held.lease.token)
    await asyncio.sleep(0.4)  # the stalled waiter's deadline passes; the live one's does not
    back = await turn(stalled.place, "local/stalled", 30)
    assert (back.grant, back.ahead) == (None, 1)  # the lease is free, but it was skipped
    assert back.place is not None and back.place > live.place
    got = await turn(live.place, "local/live", 30)
    assert got.grant is not None and got.grant.lease.holder == "local/live"
    assert await waiting(backend) == 1


async def test_a_sweep_deletes_the_rows_of_waiters_nobody_came_back_for(
    backend: Backend, manager: StateManager
) -> None:
    await manager.register("plan")
    store: Store = manager.store
    await manager.take_lease("plan", ttl_seconds=30)
    for label, seconds in (("gone", 0.2), ("waiting", 30)):
        await store.take_in_turn(
            "default",
            "plan",
            place=None,
            holder=f"local/{label}",
            ttl_seconds=30,
            wait_until=utcnow() + timedelta(seconds=seconds),
            actor="local",
            max_waiters=32,
            max_namespace_waiters=256,
        )
    await asyncio.sleep(0.3)  # the first one's wait is over; nobody tries on the context again
    assert await waiting(backend) == 2
    assert await store.sweep() == []  # no context expired
    assert await backend.sql("SELECT holder FROM lease_waiters") == [("local/waiting",)]
