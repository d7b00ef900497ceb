"""Leases: an agent takes a context for a while, and its writes carry the lease's fencing token.

The store keeps the lease and checks the token inside every write transaction
(:mod:`groundhog_mcp.store.leases`); this module validates the arguments and queues the takers
that wait (first come, first served within a server process; across processes whoever retries
first after the release). A write presents a token as its caller's ``lease_token``
(:meth:`StateManager.with_lease`; the MCP tools pass their ``lease_token`` argument so), or
inside :meth:`StateManager.leased`, which takes the lease, hands out a view of the manager whose
writes present its token, and releases it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING

from groundhog_mcp.errors import LeasedError, StateValidationError, ValidationIssue
from groundhog_mcp.models import NAME_PATTERN, utcnow
from groundhog_mcp.service.bus import Resync, Subscription
from groundhog_mcp.service.validation import check_name
from groundhog_mcp.store.base import Lease, LeaseAction, LeaseGrant, Store, StoredContext

if TYPE_CHECKING:
    from groundhog_mcp.service.state import StateManager

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "MAX_LEASE_WAIT_SECONDS",
    "LeaseQueues",
    "held_lease",
    "held_leases",
    "lease_action",
    "leased",
    "take_lease",
]

DEFAULT_LEASE_SECONDS = 60.0
MAX_LEASE_WAIT_SECONDS = 60.0
_MAX_HOLDER_CHARS = 64


class LeaseQueues:
    """One FIFO queue per context of the takers that wait in this process (asyncio locks hand
    themselves over in arrival order); a queue nobody waits in is dropped."""

    def __init__(self) -> None:
        self._queues: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()

    def queue(self, namespace: str, name: str) -> asyncio.Lock:
        key = (namespace, name)
        lock = self._queues.get(key)
        if lock is None:
            lock = self._queues[key] = asyncio.Lock()
        return lock


def _ttl(manager: StateManager, ttl_seconds: float | None) -> float:
    """The lease length asked for, or the default (60 s, at most the server's cap)."""
    if ttl_seconds is None:
        return min(DEFAULT_LEASE_SECONDS, manager.limits.max_lease_seconds)
    return ttl_seconds


def _check_arguments(manager: StateManager, ttl_seconds: float, wait_seconds: float, holder: str | None) -> None:
    limit = manager.limits.max_lease_seconds
    if not 0 < ttl_seconds <= limit:
        raise StateValidationError(
            [ValidationIssue("", f"must be more than 0 and at most {limit:g} seconds; got {ttl_seconds:g}")],
            field="ttl_seconds",
        )
    if not 0 <= wait_seconds <= MAX_LEASE_WAIT_SECONDS:
        raise StateValidationError(
            [ValidationIssue("", f"must be between 0 and {MAX_LEASE_WAIT_SECONDS:g} seconds; got {wait_seconds:g}")],
            field="wait_seconds",
        )
    if holder is not None:
        check_name(holder, field="holder")
        if len(holder) > _MAX_HOLDER_CHARS:
            raise StateValidationError(
                [ValidationIssue("", f"must be at most {_MAX_HOLDER_CHARS} characters ({NAME_PATTERN})")],
                field="holder",
            )


async def lease_action(
    manager: StateManager,
    name: str,
    action: LeaseAction,
    *,
    token: int | None = None,
    ttl_seconds: float | None = None,
    holder: str | None = None,
) -> LeaseGrant:
    """One lease action as ``manager``'s principal (needs ``write`` on ``name``), committed and
    published on the change feed."""
    check_name(name)
    await manager.authorize("write", name)
    ttl = _ttl(manager, ttl_seconds)
    _check_arguments(manager, ttl, 0, holder)
    if action != "take" and token is None:
        raise StateValidationError([ValidationIssue("", f"{action} needs the token take returned")], field="token")
    who = manager.principal.name if holder is None else f"{manager.principal.name}/{holder}"
    return await manager.writer.committed(
        manager.store.lease(
            manager.principal.namespace,
            name,
            action,
            token=token,
            holder=who,
            ttl_seconds=ttl,
            actor=manager.principal.name,
            audit=manager.audit.note(manager.caller),
        ),
        lambda grant: grant.change,
    )


async def take_lease(
    manager: StateManager,
    name: str,
    *,
    ttl_seconds: float | None = None,
    wait_seconds: float = 0,
    holder: str | None = None,
) -> LeaseGrant:
    """Take the lease of ``name`` for ``ttl_seconds``; while another agent holds it, wait up to
    ``wait_seconds`` for its release or expiry (in line behind the takers that came first),
    then raise :class:`LeasedError`."""
    check_name(name)
    _check_arguments(manager, _ttl(manager, ttl_seconds), wait_seconds, holder)
    if wait_seconds == 0:
        return await lease_action(manager, name, "take", ttl_seconds=ttl_seconds, holder=holder)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    # Subscribed before the first try: a release committed after it is never missed.
    subscription = manager.bus.subscribe()
    queue = manager.lease_queues.queue(manager.principal.namespace, name)
    try:
        try:
            async with asyncio.timeout_at(deadline):
                await queue.acquire()
        except TimeoutError:
            # Everyone ahead in the line was still waiting: one last try says who holds it.
            return await lease_action(manager, name, "take", ttl_seconds=ttl_seconds, holder=holder)
        try:
            while True:
                # The write itself is never cut short by the deadline (a lease taken and then
                # abandoned would block everyone until it expired); only the waits are.
                try:
                    return await lease_action(manager, name, "take", ttl_seconds=ttl_seconds, holder=holder)
                except LeasedError as refused:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or refused.expires_at is None:
                        raise
                    expiry = (refused.expires_at - utcnow()).total_seconds()
                    await _next_change(subscription, manager.principal.namespace, name, min(remaining, max(expiry, 0)))
        finally:
            queue.release()
    finally:
        subscription.close()


async def _next_change(subscription: Subscription, namespace: str, name: str, timeout: float) -> None:  # noqa: ASYNC109
    """Return at the next change of context ``name`` on the feed (or a resync), or after ``timeout``."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                item = await subscription.get()
                if isinstance(item, Resync) or (item.namespace == namespace and item.name == name):
                    return


@contextlib.asynccontextmanager
async def leased(
    manager: StateManager,
    name: str,
    *,
    ttl_seconds: float | None = None,
    wait_seconds: float = 0,
    holder: str | None = None,
) -> AsyncGenerator[StateManager]:
    """Take the lease of ``name``; yield a view of ``manager`` whose writes present its token;
    release it at the end (a lease lost meanwhile, by expiry, is not released again: the writes
    after its loss were refused)."""
    grant = await take_lease(manager, name, ttl_seconds=ttl_seconds, wait_seconds=wait_seconds, holder=holder)
    token = grant.lease.token
    try:
        yield manager.with_lease(token)
    finally:
        with contextlib.suppress(LeasedError):
            await lease_action(manager, name, "release", token=token)


async def held_lease(store: Store, context: StoredContext) -> Lease | None:
    """The lease held on ``context`` now, None when it is free."""
    return (await held_leases(store, [context])).get(context.name)


async def held_leases(store: Store, contexts: Sequence[StoredContext]) -> dict[str, Lease]:
    """The leases held now on ``contexts`` (of one namespace), by context name; one store query."""
    names = {context.id: context.name for context in contexts}
    now = utcnow()
    return {names[lease.context_id]: lease for lease in await store.read_leases(list(names)) if lease.held(now)}
