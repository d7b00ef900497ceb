"""Leases with fencing tokens, on every backend: take, renew, release, the fencing check in every
write, waiting in line, expiry checked at use, and two instances on one database."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from groundhog_mcp import ContextState, StateManager
from groundhog_mcp.errors import AccessDeniedError, LeasedError, NotFoundError, StateValidationError
from groundhog_mcp.models import Grant, Principal
from groundhog_mcp.service import WriteResult
from groundhog_mcp.service.events import Event
from groundhog_mcp.service.validation import Limits

HANDLERS = {"inc": {"action": "increment", "path": "/n"}}


async def _snapshot(manager: StateManager, name: str) -> tuple[int, str, int]:
    context = await manager.get(name)
    return context.revision, context.state.to_json().__repr__(), await manager.store.last_sequence()


async def test_every_write_needs_the_token_while_held_and_none_after(manager: StateManager) -> None:
    await manager.register("plan", state=ContextState(data={"n": 1}), handlers=HANDLERS)
    await manager.register("other")
    grant = await manager.take_lease("plan", ttl_seconds=30, holder="agent-a")
    assert (grant.lease.token, grant.held, grant.lease.holder) == (1, True, "local/agent-a")
    before = await _snapshot(manager, "plan")
    refusals = {
        "update": manager.update("plan", data={"n": 2}),
        "rollback": manager.rollback("plan", 1),
        "event": manager.emit_event("plan", Event(type="inc", payload={})),
        "merge into it": manager.merge([{"context": "other"}, {"context": "plan"}], target="plan"),
        "unregister": manager.unregister("plan"),
    }
    for what, write in refusals.items():
        with pytest.raises(LeasedError) as refused:
            await write
        error = refused.value
        assert (error.code, error.retryable, error.holder) == ("leased", True, "local/agent-a"), what
        assert error.expires_at == grant.lease.expires_at, what
        assert str(error).startswith("lease_token: context 'plan' is leased by 'local/agent-a' until "), what
        assert await _snapshot(manager, "plan") == before, what  # nothing written, not even a change row
    with pytest.raises(LeasedError, match="presented lease_token 7, not the lease's token"):
        await manager.with_lease(7).update("plan", data={"n": 2})
    holder = manager.with_lease(grant.lease.token)
    await holder.update("plan", data={"n": 2})
    await holder.emit_event("plan", Event(type="inc", payload={}))
    await holder.rollback("plan", 2)
    await holder.merge([{"context": "other"}, {"context": "plan"}], target="plan")
    assert (await manager.get("plan")).state.data == {"n": 2}
    await manager.release_lease("plan", grant.lease.token)
    assert (await manager.update("plan", data={"n": 3})).context.revision == 6
    await manager.unregister("plan")


async def test_tokens_increase_and_an_older_token_is_refused_even_after_release(manager: StateManager) -> None:
    await manager.register("plan")
    first = await manager.take_lease("plan")
    await manager.release_lease("plan", first.lease.token)
    second = await manager.take_lease("plan")
    assert second.lease.token == first.lease.token + 1
    with pytest.raises(LeasedError) as refused:
        await manager.with_lease(first.lease.token).update("plan", data={"stale": True})
    assert (refused.value.holder, refused.value.retryable) == ("local", False)  # held by the second; superseded
    await manager.release_lease("plan", second.lease.token)
    for token, why in ((first.lease.token, "a newer lease, token 2, was taken since"), (2, "it was released")):
        with pytest.raises(LeasedError) as refused:
            await manager.with_lease(token).update("plan", data={"stale": True})
        error = refused.value
        assert (error.retryable, error.holder, error.expires_at) == (False, None, None)
        assert f"lease_token: {token} is not a live lease of context 'plan' ({why})" in str(error)
    with pytest.raises(LeasedError, match="no such token was issued"):
        await manager.with_lease(9).update("plan", data={"stale": True})
    assert (await manager.get("plan")).revision == 1
    # Renewing or releasing with a stale token is refused too; releasing twice is harmless.
    with pytest.raises(LeasedError):
        await manager.renew_lease("plan", first.lease.token)
    with pytest.raises(LeasedError):
        await manager.release_lease("plan", first.lease.token)
    again = await manager.release_lease("plan", second.lease.token)
    assert (again.held, again.change) == (False, None)
    assert (await manager.take_lease("plan")).lease.token == 3


async def test_a_holder_that_stops_renewing_loses_it_at_expiry(manager: StateManager, other: StateManager) -> None:
    await manager.register("plan")
    slow = await manager.take_lease("plan", ttl_seconds=1.5, holder="slow")
    renewed = await manager.renew_lease("plan", slow.lease.token, ttl_seconds=1.5)
    assert renewed.lease.expires_at is not None and slow.lease.expires_at is not None
    assert renewed.lease.expires_at > slow.lease.expires_at and renewed.lease.token == slow.lease.token
    with pytest.raises(LeasedError):
        await other.update("plan", data={"by": "other"})
    await asyncio.sleep(1.6)  # the holder pauses past its expiry; no process runs a timer
    # Expired and not taken again: a write with its token is refused, one without passes.
    with pytest.raises(LeasedError, match=r"it expired at "):
        await manager.with_lease(slow.lease.token).update("plan", data={"by": "slow"})
    assert (await other.update("plan", data={"by": "other"})).context.revision == 2
    fresh = await other.take_lease("plan", holder="fresh")
    assert fresh.lease.token == slow.lease.token + 1
    with pytest.raises(LeasedError):
        await manager.with_lease(slow.lease.token).update("plan", data={"by": "slow"})
    with pytest.raises(LeasedError):
        await manager.renew_lease("plan", slow.lease.token)
    assert (await manager.get("plan")).state.data == {"by": "other"}


async def test_the_loser_waits_and_gets_it_after_release_on_another_instance(
    manager: StateManager, other: StateManager
) -> None:
    await manager.register("plan")
    held = await manager.take_lease("plan", ttl_seconds=30, holder="a")
    with pytest.raises(LeasedError) as refused:
        await other.take_lease("plan", holder="b")  # no wait: refused at once
    assert (refused.value.holder, refused.value.expires_at) == ("local/a", held.lease.expires_at)
    waiter = asyncio.create_task(other.take_lease("plan", wait_seconds=20, holder="b"))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    await manager.release_lease("plan", held.lease.token)
    got = await asyncio.wait_for(waiter, 10)  # woken by the release on the change feed
    assert (got.lease.token, got.lease.holder) == (held.lease.token + 1, "local/b")
    lease = await manager.lease_of(await manager.get("plan"))
    assert lease is not None and lease.token == got.lease.token


async def test_waiters_are_served_first_come_first_served(manager: StateManager) -> None:
    await manager.register("plan")
    held = await manager.take_lease("plan", ttl_seconds=30)
    order: list[str] = []

    async def wait_in_line(label: str) -> None:
        grant = await manager.take_lease("plan", wait_seconds=20, holder=label)
        order.append(label)
        await manager.release_lease("plan", grant.lease.token)

    waiters = []
    for label in ("first", "second", "third"):
        waiters.append(asyncio.create_task(wait_in_line(label)))
        await asyncio.sleep(0.05)  # they queue in this order
    await manager.release_lease("plan", held.lease.token)
    await asyncio.wait_for(asyncio.gather(*waiters), 20)
    assert order == ["first", "second", "third"]


async def test_a_wait_that_runs_out_says_who_holds_it(manager: StateManager) -> None:
    await manager.register("plan")
    await manager.take_lease("plan", ttl_seconds=30, holder="a")
    with pytest.raises(LeasedError, match=r"^name: context 'plan' is leased by 'local/a' until "):
        await manager.take_lease("plan", wait_seconds=0.2)
    # An expiry inside the wait frees it for the waiter, without a release.
    await manager.register("short")
    await manager.take_lease("short", ttl_seconds=0.2)
    assert (await manager.take_lease("short", wait_seconds=5)).lease.token == 2


async def test_lease_changes_are_in_the_feed_and_the_revision_does_not_move(manager: StateManager) -> None:
    registered = await manager.register("plan")
    assert isinstance(registered, WriteResult)
    start = registered.change.sequence
    grant = await manager.take_lease("plan")
    await manager.renew_lease("plan", grant.lease.token)
    await manager.release_lease("plan", grant.lease.token)
    changes = await manager.changes_after(start)
    assert [(c.op, c.revision, c.patch) for c in changes] == [
        ("lease_take", 1, None),
        ("lease_renew", 1, None),
        ("lease_release", 1, None),
    ]
    assert (await manager.get("plan")).revision == 1
    assert [e.op for e in await manager.history("plan")] == ["register"]  # no history entry


async def test_arguments_are_checked_and_tenants_are_apart(manager: StateManager) -> None:
    await manager.register("plan")
    manager.limits = Limits(max_lease_seconds=10)
    with pytest.raises(
        StateValidationError, match=r"^ttl_seconds: must be more than 0 and at most 10 seconds; got 11$"
    ):
        await manager.take_lease("plan", ttl_seconds=11)
    with pytest.raises(StateValidationError, match=r"^wait_seconds: must be between 0 and 60 seconds; got 61$"):
        await manager.take_lease("plan", ttl_seconds=5, wait_seconds=61)
    with pytest.raises(StateValidationError, match=r"^token: renew needs the token take returned$"):
        await manager.renew_lease("plan", None, ttl_seconds=5)
    with pytest.raises(StateValidationError, match=r"^holder: "):
        await manager.take_lease("plan", ttl_seconds=5, holder="no spaces")
    with pytest.raises(NotFoundError, match=r"^name: no context named 'missing'$"):
        await manager.take_lease("missing")
    grant = await manager.take_lease("plan")  # the default, 60 s, is capped too
    assert grant.lease.expires_at is not None and grant.change is not None
    assert (grant.lease.expires_at - grant.change.timestamp).total_seconds() == 10
    # Another namespace: the context is missing there; its own context of the same name is its own.
    tenant = manager.with_principal(Principal(name="mallory", namespace="tenant-b"))
    for attempt in (
        tenant.take_lease("plan", ttl_seconds=5),
        tenant.renew_lease("plan", grant.lease.token, ttl_seconds=5),
        tenant.release_lease("plan", grant.lease.token),
    ):
        with pytest.raises(NotFoundError, match=r"^name: no context named 'plan'$"):
            await attempt
    await tenant.register("plan")
    assert (await tenant.take_lease("plan", ttl_seconds=5)).lease.token == 1  # tokens count per context
    await manager.release_lease("plan", grant.lease.token)
    mine = await manager.take_lease("plan")
    with pytest.raises(LeasedError, match="leased by 'mallory' until"):
        await tenant.with_lease(mine.lease.token).update(
            "plan", data={"x": 1}
        )  # the default namespace's token 2 is nothing there
    assert [c.op for c in await tenant.changes_after(0)] == ["register", "lease_take"]
    reader = manager.with_principal(Principal(name="reader", grants=(Grant(prefix="", right="read"),)))
    with pytest.raises(AccessDeniedError, match=r"^access: the write grant on 'plan' is missing"):
        await reader.take_lease("plan", ttl_seconds=5)


async def test_the_leases_of_a_page_of_contexts_in_one_query(manager: StateManager, other: StateManager) -> None:
    for name in ("a", "b", "c", "d"):
        await manager.register(name)
    held = await manager.take_lease("a", ttl_seconds=30, holder="x")
    released = await other.take_lease("b", ttl_seconds=30, holder="y")  # another instance's lease
    await other.release_lease("b", released.lease.token)
    await other.take_lease("c", ttl_seconds=30, holder="z")
    page = (await manager.list()).contexts
    reads: list[int] = []
    read_leases = manager.store.read_leases

    async def counted(context_ids: Any) -> Any:
        reads.append(len(context_ids))
        return await read_leases(context_ids)

    manager.store.read_leases = counted  # type: ignore[method-assign]
    leases = await manager.leases_of(page)
    assert reads == [4]  # one query for the page
    assert {n: (lease.holder, lease.token) for n, lease in leases.items()} == {"a": ("local/x", 1), "c": ("local/z", 1)}
    assert leases["a"].expires_at == held.lease.expires_at
    assert await manager.leases_of([]) == {}
