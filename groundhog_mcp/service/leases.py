"""Leases: an agent takes a context for a while, and its writes carry the lease's fencing token.

The store keeps the lease and checks the token inside every write transaction
(:mod:`groundhog_mcp.store.leases`); this module validates the arguments and runs the takers
that wait: each joins the store's waiting line for the context (first come, first served on
every process and instance), tries again when the lease is released or its holder's expiry
passes, and at least every :data:`WAITER_HEARTBEAT_SECONDS`, which keeps its place alive; it
leaves the line when it takes the lease, gives up or is cancelled.

The hand-over is fast: a release in this process wakes this process's waiters of that context
at once (:class:`_LocalWaiters`, no feed round trip); a release by another process reaches them
through the change feed, which polls every few milliseconds (:meth:`ChangeFeed.hurry`) while one
of them is next in line (or the lease is free and the line is moving) and at its usual rate
otherwise; on PostgreSQL the release's ``NOTIFY`` wakes the feed at once. A write
presents a token as its caller's ``lease_token`` (:meth:`StateManager.with_lease`; the MCP tools
pass their ``lease_token`` argument so), or inside :meth:`StateManager.leased`, which takes the
lease, hands out a view of the manager whose writes present its token, and releases it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncGenerator, Generator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from groundhog_mcp.errors import LeasedError, StateValidationError, ValidationIssue
from groundhog_mcp.models import NAME_PATTERN, format_timestamp, utcnow
from groundhog_mcp.service.bus import ChangeBus, Resync, Subscription
from groundhog_mcp.service.validation import check_name
from groundhog_mcp.store.base import Lease, LeaseAction, LeaseGrant, LeaseTurn, Store, StoredContext

if TYPE_CHECKING:
    from groundhog_mcp.service.state import StateManager

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "MAX_LEASE_WAIT_SECONDS",
    "WAITER_HEARTBEAT_SECONDS",
    "held_lease",
    "held_leases",
    "lease_action",
    "leased",
    "take_lease",
]

DEFAULT_LEASE_SECONDS = 60.0
MAX_LEASE_WAIT_SECONDS = 60.0
WAITER_HEARTBEAT_SECONDS = 1.0
"""A waiter tries again at least this often: its place in line stays live (the store keeps it
for ``store.leases.WAITER_ALIVE_SECONDS`` after a try), and a line that moved without a change
in the feed (a waiter ahead gave up) is noticed."""
_MAX_HOLDER_CHARS = 64
# The changes of a context after which a waiter tries again at once: the lease was released, or
# the context is gone (the try says so).
_WAKING_OPS = frozenset({"lease_release", "unregister", "expired"})
# And, for a waiter that found the lease free but others before it: the take by one of them
# (after which it may be next in line).
_MOVING_OPS = _WAKING_OPS | {"lease_take"}


class _LocalWaiters:
    """This process's lease waiters, by context: a release (or a waiter leaving) here wakes them at
    once. As many entries as waiters, which the store's line caps bound."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str], set[asyncio.Event]] = {}

    @contextlib.contextmanager
    def join(self, namespace: str, name: str) -> Generator[asyncio.Event]:
        key = (namespace, name)
        woken = asyncio.Event()
        self._waiting.setdefault(key, set()).add(woken)
        try:
            yield woken
        finally:
            waiters = self._waiting[key]
            waiters.discard(woken)
            if not waiters:
                del self._waiting[key]

    def wake(self, namespace: str, name: str) -> None:
        for woken in self._waiting.get((namespace, name), ()):
            woken.set()


# One per manager (and its views, which share its bus); gone with it.
_LOCAL: weakref.WeakKeyDictionary[ChangeBus, _LocalWaiters] = weakref.WeakKeyDictionary()


def _local(manager: StateManager) -> _LocalWaiters:
    local = _LOCAL.get(manager.bus)
    if local is None:
        local = _LOCAL[manager.bus] = _LocalWaiters()
    return local


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


def _holder(manager: StateManager, holder: str | None) -> str:
    """A lease's holder as recorded: the principal, and the label the agent gave."""
    return manager.principal.name if holder is None else f"{manager.principal.name}/{holder}"


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
    grant = await manager.writer.committed(
        manager.store.lease(
            manager.principal.namespace,
            name,
            action,
            token=token,
            holder=_holder(manager, holder),
            ttl_seconds=ttl,
            actor=manager.principal.name,
            audit=manager.audit.note(manager.caller),
        ),
        lambda grant: grant.change,
    )
    if action == "release" and grant.change is not None:
        _local(manager).wake(manager.principal.namespace, name)  # this process's waiters: at once
    return grant


async def take_lease(
    manager: StateManager,
    name: str,
    *,
    ttl_seconds: float | None = None,
    wait_seconds: float = 0,
    holder: str | None = None,
) -> LeaseGrant:
    """Take the lease of ``name`` for ``ttl_seconds``; while another agent holds it (or others
    wait for it), wait in line up to ``wait_seconds``, first come, first served across processes
    and instances, then raise :class:`LeasedError`. A full line raises
    :class:`~groundhog_mcp.errors.StoreBusyError` (``max_lease_waiters``, per context and per namespace)."""
    check_name(name)
    ttl = _ttl(manager, ttl_seconds)
    _check_arguments(manager, ttl, wait_seconds, holder)
    if wait_seconds == 0:
        return await lease_action(manager, name, "take", ttl_seconds=ttl_seconds, holder=holder)
    await manager.authorize("write", name)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    wait_until = utcnow() + timedelta(seconds=wait_seconds)
    namespace = manager.principal.namespace
    # Subscribed before the first try: a release committed after it is never missed.
    subscription = manager.bus.subscribe()
    place: int | None = None
    try:
        with _local(manager).join(namespace, name) as woken:
            while True:
                woken.clear()  # a wake-up before this try is answered by it
                turn = await _try(manager, name, place, _holder(manager, holder), ttl, wait_until)
                place = turn.place
                if turn.grant is not None:
                    return turn.grant
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise _waited_out(name, turn, wait_seconds)
                pause = min(remaining, WAITER_HEARTBEAT_SECONDS)
                if turn.retry_at is not None:
                    pause = min(pause, max((turn.retry_at - utcnow()).total_seconds(), 0) + 0.005)
                # Next in line (or the lease is free and those before are taking it): hear the
                # release by another process within milliseconds.
                moving = turn.held is None
                with manager.feed.hurry() if turn.ahead == 0 or moving else contextlib.nullcontext():
                    await _next_release(subscription, woken, namespace, name, pause, moving=moving)
    finally:
        subscription.close()
        if place is not None:
            await _leave(manager, name, place)


async def _try(
    manager: StateManager, name: str, place: int | None, holder: str, ttl: float, wait_until: datetime
) -> LeaseTurn:
    """One try in line, committed and published even if the caller is cancelled meanwhile (then
    the lease it took is released, or its place left, by a task of its own)."""
    limits = manager.limits
    attempt = asyncio.ensure_future(
        manager.writer.committed(
            manager.store.take_in_turn(
                manager.principal.namespace,
                name,
                place=place,
                holder=holder,
                ttl_seconds=ttl,
                wait_until=wait_until,
                actor=manager.principal.name,
                audit=manager.audit.note(manager.caller),
                max_waiters=limits.max_lease_waiters,
                max_namespace_waiters=limits.max_lease_waiters_per_namespace,
            ),
            lambda turn: turn.grant.change if turn.grant is not None else None,
        )
    )
    try:
        return await asyncio.shield(attempt)
    except asyncio.CancelledError:
        _track(manager, _abandon(manager, name, attempt))
        raise


async def _abandon(manager: StateManager, name: str, attempt: asyncio.Future[LeaseTurn]) -> None:
    """Undo the try of a waiter that went away: nobody would use the lease it took."""
    with contextlib.suppress(Exception):
        turn = await attempt
        if turn.grant is not None:
            await lease_action(manager, name, "release", token=turn.grant.lease.token)
        elif turn.place is not None:
            await manager.store.leave_line(manager.principal.namespace, turn.place)


async def _leave(manager: StateManager, name: str, place: int) -> None:
    """Leave the line (run to its end even if the waiter is being cancelled); the line moved, so
    this process's other waiters of ``name`` try again."""
    namespace = manager.principal.namespace

    async def leave() -> None:
        await manager.store.leave_line(namespace, place)
        _local(manager).wake(namespace, name)

    task = _track(manager, leave())
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(task)


def _track(manager: StateManager, work: Any) -> asyncio.Task[None]:
    task: asyncio.Task[None] = asyncio.ensure_future(work)
    manager.writer.pending.add(task)  # close() waits for it
    task.add_done_callback(manager.writer.pending.discard)
    return task


def _waited_out(name: str, turn: LeaseTurn, wait_seconds: float) -> LeasedError:
    ahead = f"; {turn.ahead} agent{'s' if turn.ahead != 1 else ''} came before you in line" if turn.ahead else ""
    waited = f"waited {wait_seconds:g} s{ahead}"
    if turn.held is not None:
        until = format_timestamp(turn.held.expires_at) if turn.held.expires_at is not None else "?"
        return LeasedError(
            f"name: context {name!r} is leased by {turn.held.holder!r} until {until}; {waited}",
            holder=turn.held.holder,
            expires_at=turn.held.expires_at,
        )
    return LeasedError(
        f"name: the lease of context {name!r} is free, but it is not your turn yet ({waited})",
        holder=None,
        expires_at=None,
    )


async def _next_release(
    subscription: Subscription,
    woken: asyncio.Event,
    namespace: str,
    name: str,
    timeout: float,  # noqa: ASYNC109 - the waiter's heartbeat pause, bounded by the caller
    *,
    moving: bool,
) -> None:
    """Return when ``woken`` is set (a release in this process), at the next release (or removal;
    when ``moving``, also a take) of context ``name`` on the feed, at a resync, or after ``timeout``."""
    ops = _MOVING_OPS if moving else _WAKING_OPS
    waker = asyncio.ensure_future(woken.wait())
    try:
        async with asyncio.timeout(timeout):
            while not waker.done():
                getter = asyncio.ensure_future(subscription.get())
                try:
                    await asyncio.wait((getter, waker), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    getter.cancel()
                if getter.done() and not getter.cancelled():
                    item = getter.result()
                    if isinstance(item, Resync) or (
                        item.namespace == namespace and item.name == name and item.op in ops
                    ):
                        return
    except TimeoutError:
        return
    finally:
        waker.cancel()


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
