"""Leases with fencing tokens, written once for both backends.

A context's lease row (table ``leases``, one per context id) keeps the last fencing token issued
and, while the lease is held, its holder and expiry. A token is issued by ``take`` only, one more
than the last, so tokens strictly increase per context, also after a release or an expiry.
Expiry is checked where a lease is used (take, renew, release, every write): no timer runs.

Every lease action and every write locks the context row first (PostgreSQL: ``FOR UPDATE``;
SQLite: the ``BEGIN IMMEDIATE`` write lock), then reads the lease row: a lease action and a write
to the same context are ordered, on every process and instance.

Agents that wait for a held lease queue in table ``lease_waiters``: a row per waiter, whose id,
given under the context's lock, is its place in line. A waiter takes the lease only when it is
free and no live waiter came before it (a take without waiting is refused while anyone waits).
A waiter is live until ``alive_until``, a heartbeat deadline its tries push forward
(:data:`WAITER_ALIVE_SECONDS`), never past the end of its wait: one that gave up or whose process
died is skipped once that passes, and its row is deleted by the next try on its line (or its
namespace's next enqueue, or a sweep). No timer runs. The line is bounded per context and per
namespace.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final, LiteralString

from groundhog_mcp.errors import LeasedError, NotFoundError, StoreBusyError
from groundhog_mcp.models import Change, ContextId, format_timestamp, utcnow
from groundhog_mcp.store.adapter import ChangeWrite, Row, StoreAdapter, Tx, marks
from groundhog_mcp.store.base import AuditEntry, AuditNote
from groundhog_mcp.store.rows import Lease, LeaseAction, LeaseGrant, LeaseTurn, as_id, as_time

__all__ = ["WAITER_ALIVE_SECONDS", "Lease", "LeaseAction", "LeaseGrant", "LeaseTurn", "Leasing", "check_fence"]

WAITER_ALIVE_SECONDS = 5.0
"""How long a waiter keeps its place in line after its last try: a waiter tries again at least
every second (service/leases.py), so only one that stopped waiting (or whose process died, or
stalled this long) is skipped."""


def check_fence(name: str, lease: Lease | None, token: int | None, now: datetime) -> None:
    """Refuse a write that does not present the live lease's token (while one is held), or that
    presents a token that is not the live lease's (stale: released, expired or superseded)."""
    if lease is not None and lease.held(now):
        if token == lease.token:
            return
        given = "no lease_token" if token is None else f"lease_token {token}, not the lease's token"
        raise LeasedError(
            f"lease_token: context {name!r} is leased by {lease.holder!r} until {format_timestamp(_at(lease))}"
            f" and the write presented {given}; wait for the release or the expiry (lease action='take' with"
            " wait_seconds), or write with the holder's token",
            holder=lease.holder,
            expires_at=lease.expires_at,
            stale=token is not None,  # superseded: that token can never write again
        )
    if token is None:
        return
    raise LeasedError(
        f"lease_token: {token} is not a live lease of context {name!r} ({_why_stale(lease, token, now)}); "
        "nothing was written: re-read the state, take the lease again and write with its new token",
        holder=None,
        expires_at=None,
        stale=True,
    )


def _why_stale(lease: Lease | None, token: int, now: datetime) -> str:
    if lease is None or token > lease.token:
        return "no such token was issued"
    if token < lease.token:
        return f"a newer lease, token {lease.token}, was taken since"
    if lease.holder is None:
        return "it was released"
    return f"it expired at {format_timestamp(_at(lease))}"


def _lease(context_id: ContextId, token: Any, holder: Any, expires_at: Any) -> Lease:
    """A lease row's columns (token, holder, expires_at) as a :class:`Lease`."""
    return Lease(
        context_id=context_id,
        token=int(token),
        holder=str(holder) if holder is not None else None,
        expires_at=as_time(expires_at) if expires_at is not None else None,
    )


def _at(lease: Lease) -> datetime:
    assert lease.expires_at is not None  # a held lease has an expiry
    return lease.expires_at


# The lease row's columns beside the locked context row (primary-key lookups in the same
# statement): the fencing check costs a write no round trip of its own.
_LEASE_COLUMNS: Final[LiteralString] = (
    ", (SELECT token FROM leases WHERE context_id = contexts.id),"
    " (SELECT holder FROM leases WHERE context_id = contexts.id),"
    " (SELECT expires_at FROM leases WHERE context_id = contexts.id)"
)


class Leasing(StoreAdapter):
    """The lease operations of :class:`~groundhog_mcp.store.core.StoreCore`."""

    async def _wait_for_lock(self, tx: Tx, namespace: str, name: str) -> None:
        """On a backend whose statements read as of their start (``REREAD_AFTER_LOCK``): lock the
        live context row in a statement of its own, sent with the next one, so that the next
        statement reads the lease and the waiting line as committed once the lock is held — not as
        before a lease action that committed while this one waited (its token would pass the fence)."""
        if self.REREAD_AFTER_LOCK:
            await tx.execute(
                f"SELECT 1 FROM contexts WHERE namespace = %s AND name = %s AND {self._live}" + self.FOR_UPDATE,
                (namespace, name),
            )

    async def _read_lease(self, tx: Tx, context_id: ContextId) -> Lease | None:
        row = await tx.fetchone("SELECT token, holder, expires_at FROM leases WHERE context_id = %s", (context_id,))
        return _lease(context_id, *row) if row is not None else None

    @property
    def _locked_row(self) -> LiteralString:
        """The live context row with its lease's columns last (see :meth:`_fence`)."""
        return self._live_row.replace(" FROM contexts ", _LEASE_COLUMNS + " FROM contexts ", 1)

    def _fence(self, row: Row, context_id: ContextId, name: str, token: int | None) -> None:
        """The fencing check of a write, in its transaction, on the context row it locked
        (read with :attr:`_locked_row`)."""
        held_token, holder, expires_at = row[-3], row[-2], row[-1]
        lease = _lease(context_id, held_token, holder, expires_at) if held_token is not None else None
        check_fence(name, lease, token, utcnow())

    async def read_leases(self, context_ids: Sequence[ContextId]) -> list[Lease]:
        if not context_ids:
            return []
        rows = await self._transaction(
            lambda tx: tx.fetchall(
                "SELECT context_id, token, holder, expires_at FROM leases"
                f" WHERE context_id IN ({marks(len(context_ids))})",
                tuple(context_ids),
            ),
            writing=False,
        )
        return [_lease(as_id(row[0]), *row[1:]) for row in rows]

    async def _lock_line(self, tx: Tx, namespace: str, name: str, place: int | None) -> tuple[_Line, datetime]:
        """Lock the live context row; read its lease and its waiting line as ``place`` sees it
        (None: a newcomer, behind everyone), and the time to act at: taken once the lock is held,
        so that a take is recorded after the release or expiry it follows."""
        await self._wait_for_lock(tx, namespace, name)
        now = utcnow()
        where: LiteralString = f" FROM contexts WHERE namespace = %s AND name = %s AND {self._live}"
        before = place if place is not None else _BEHIND_EVERYONE
        row = await tx.fetchone(
            "SELECT id, revision" + _LEASE_COLUMNS + _LINE_COLUMNS + where + self.FOR_UPDATE,
            (now, before, now, before, now, place if place is not None else 0, now, namespace, name),
        )
        if row is None:
            raise NotFoundError(f"name: no context named {name!r}")
        context_id = as_id(row[0])
        lease = _lease(context_id, row[2], row[3], row[4]) if row[2] is not None else None
        first_deadline = as_time(row[6]) if row[6] is not None else None
        line = _Line(
            context_id, int(row[1]), lease, int(row[5]), first_deadline, bool(row[7]), int(row[8]), int(row[9])
        )
        return line, utcnow()

    async def _take(
        self,
        tx: Tx,
        line: _Line,
        namespace: str,
        name: str,
        holder: str,
        ttl_seconds: float,
        actor: str,
        audit: AuditNote | None,
        now: datetime,
    ) -> LeaseGrant:
        """Issue the next fencing token to ``holder`` (the lease is free and it is their turn)."""
        current = line.lease
        after = Lease(line.context_id, (current.token if current else 0) + 1, holder, now + _ttl(ttl_seconds))
        return await self._commit_lease(tx, line, namespace, name, "take", current, after, holder, actor, audit, now)

    async def _commit_lease(
        self,
        tx: Tx,
        line: _Line,
        namespace: str,
        name: str,
        action: LeaseAction,
        current: Lease | None,
        after: Lease,
        holder: str,
        actor: str,
        audit: AuditNote | None,
        now: datetime,
    ) -> LeaseGrant:
        """Write the lease row after ``action``, its change row and its audit row."""
        context_id = line.context_id
        await tx.execute(
            "INSERT INTO leases (context_id, token, holder, expires_at, updated_at) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (context_id) DO UPDATE SET token = excluded.token, holder = excluded.holder,"
            " expires_at = excluded.expires_at, updated_at = excluded.updated_at",
            (context_id, after.token, after.holder, after.expires_at, now),
        )
        op = f"lease_{action}"
        sequence, head = await self._append_change(
            tx,
            ChangeWrite(
                context_id=context_id,
                namespace=namespace,
                name=name,
                revision=line.revision,
                op=op,
                actor=actor,
                now=now,
                patch=None,
                snapshot=None,
                size=None,
                event=None,
                payload=None,
            ),
        )
        change = Change(sequence, context_id, namespace, name, line.revision, op, actor, now, None)
        if self.audit_signer is not None:
            until = f" until {format_timestamp(after.expires_at)}" if after.expires_at is not None else ""
            who = after.holder or (current.holder if current is not None else None) or holder
            detail = f"token {after.token}, holder {who!r}{until}"
            note = AuditNote(audit.request_id if audit else None, detail)
            await self._append_audit(tx, AuditEntry.of_change(change, note), head, now)
        return LeaseGrant(after, after.holder is not None, change)

    async def _skip_the_dead(self, tx: Tx, line: _Line, now: datetime) -> None:
        """Waiters that stopped waiting (gave up, or their process died) leave the line here, at
        use: no timer runs."""
        if line.rows > line.waiting:
            await tx.execute(
                "DELETE FROM lease_waiters WHERE context_id = %s AND alive_until <= %s", (line.context_id, now)
            )

    async def lease(
        self,
        namespace: str,
        name: str,
        action: LeaseAction,
        *,
        token: int | None,
        holder: str,
        ttl_seconds: float,
        actor: str,
        audit: AuditNote | None = None,
    ) -> LeaseGrant:
        async def work(tx: Tx) -> LeaseGrant:
            line, now = await self._lock_line(tx, namespace, name, None)
            current = line.lease
            if action == "take":
                if current is not None and current.held(now):
                    raise _held_error(name, current, "retry with wait_seconds to queue for it")
                if line.waiting:
                    raise LeasedError(
                        f"name: the lease of context {name!r} is free, but {_agents(line.waiting)} in line for"
                        " it came first; take it with wait_seconds to queue behind them",
                        holder=None,
                        expires_at=None,
                    )
                await self._skip_the_dead(tx, line, now)
                return await self._take(tx, line, namespace, name, holder, ttl_seconds, actor, audit, now)
            if action == "release" and current is not None and current.token == token and current.holder is None:
                return LeaseGrant(current, False, None)  # released already: nothing to do
            if action == "release" and current is not None and current.token == token:
                after = dataclasses.replace(current, holder=None, expires_at=None)  # expired or not
            else:
                check_fence(name, current, token, now)  # renew: only the live lease's token
                assert current is not None
                after = dataclasses.replace(current, expires_at=now + _ttl(ttl_seconds))
            return await self._commit_lease(
                tx, line, namespace, name, action, current, after, holder, actor, audit, now
            )

        return await self._transaction(work, writing=True)

    async def take_in_turn(
        self,
        namespace: str,
        name: str,
        *,
        place: int | None,
        holder: str,
        ttl_seconds: float,
        wait_until: datetime,
        actor: str,
        audit: AuditNote | None = None,
        max_waiters: int,
        max_namespace_waiters: int,
    ) -> LeaseTurn:
        async def work(tx: Tx) -> LeaseTurn:
            line, now = await self._lock_line(tx, namespace, name, place)
            await self._skip_the_dead(tx, line, now)
            held = line.lease if line.lease is not None and line.lease.held(now) else None
            # A waiter whose place went dead (it stalled past its deadline) was skipped: it comes
            # back behind everyone.
            ahead = line.ahead if place is None or line.alive else line.waiting
            if held is None and ahead == 0:
                if place is not None:
                    await tx.execute("DELETE FROM lease_waiters WHERE id = %s", (place,))
                grant = await self._take(tx, line, namespace, name, holder, ttl_seconds, actor, audit, now)
                return LeaseTurn(grant, None, 0, None, None)
            alive_until = min(now + timedelta(seconds=WAITER_ALIVE_SECONDS), wait_until)
            if place is not None and line.alive:
                await tx.execute("UPDATE lease_waiters SET alive_until = %s WHERE id = %s", (alive_until, place))
                kept = place
            else:
                # A newcomer, or a waiter that was skipped as dead: to the back of the line.
                if line.waiting >= max_waiters:
                    raise _line_full(
                        f"{_agents(line.waiting)} for the lease of context {name!r}", max_waiters, "max_lease_waiters"
                    )
                found = await tx.fetchone(
                    "SELECT count(*) FROM lease_waiters WHERE namespace = %s AND alive_until > %s", (namespace, now)
                )
                in_namespace = int(found[0]) if found else 0
                if in_namespace >= max_namespace_waiters:
                    raise _line_full(
                        f"{_agents(in_namespace)} in this namespace",
                        max_namespace_waiters,
                        "max_lease_waiters_per_namespace",
                    )
                kept = await tx.insert(
                    "INSERT INTO lease_waiters (context_id, namespace, holder, alive_until) VALUES (%s, %s, %s, %s)",
                    (line.context_id, namespace, holder, alive_until),
                    "id",
                )
            moves = [t for t in (held.expires_at if held else None, line.first_deadline) if t is not None]
            return LeaseTurn(None, kept, ahead, held, min(moves) if moves else None)

        return await self._transaction(work, writing=True)

    async def leave_line(self, namespace: str, place: int) -> None:
        await self._transaction(
            lambda tx: tx.execute("DELETE FROM lease_waiters WHERE id = %s AND namespace = %s", (place, namespace)),
            writing=True,
        )


@dataclasses.dataclass(frozen=True)
class _Line:
    """A locked context's lease and its waiting line, as one waiter (or a newcomer) sees it."""

    context_id: ContextId
    revision: int
    lease: Lease | None
    ahead: int  # live waiters before this one
    first_deadline: datetime | None  # the earliest heartbeat deadline among them
    alive: bool  # this waiter's place is still live
    waiting: int  # live waiters in all
    rows: int  # rows in the line, live or dead


# Places are ids from a sequence: a newcomer counts everyone in line as before it.
_BEHIND_EVERYONE: Final = 2**62

# The waiting line beside the locked context row (parameters: now, place, now, place, now, place,
# now): live waiters before the place, the earliest of their deadlines, whether the place is live,
# the live waiters in all, and the rows in all (dead ones to delete, when more).
_LINE_COLUMNS: Final[LiteralString] = (
    ", (SELECT count(*) FROM lease_waiters WHERE context_id = contexts.id AND alive_until > %s AND id < %s),"
    " (SELECT min(alive_until) FROM lease_waiters WHERE context_id = contexts.id AND alive_until > %s"
    " AND id < %s),"
    " (SELECT count(*) FROM lease_waiters WHERE context_id = contexts.id AND alive_until > %s AND id = %s),"
    " (SELECT count(*) FROM lease_waiters WHERE context_id = contexts.id AND alive_until > %s),"
    " (SELECT count(*) FROM lease_waiters WHERE context_id = contexts.id)"
)


def _held_error(name: str, lease: Lease, advice: str) -> LeasedError:
    return LeasedError(
        f"name: context {name!r} is leased by {lease.holder!r} until {format_timestamp(_at(lease))}; {advice}",
        holder=lease.holder,
        expires_at=lease.expires_at,
    )


def _agents(count: int) -> str:
    return f"{count} agent{'s' if count != 1 else ''} waiting"


def _line_full(who: str, limit: int, setting: str) -> StoreBusyError:
    return StoreBusyError(
        f"wait_seconds: {who} already, the limit ({setting} {limit}); nothing was queued: retry later, or take"
        " without wait_seconds"
    )


def _ttl(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)
