"""Leases with fencing tokens, written once for both backends.

A context's lease row (table ``leases``, one per context id) keeps the last fencing token issued
and, while the lease is held, its holder and expiry. A token is issued by ``take`` only, one more
than the last, so tokens strictly increase per context, also after a release or an expiry.
Expiry is checked where a lease is used (take, renew, release, every write): no timer runs.

Every lease action and every write locks the context row first (PostgreSQL: ``FOR UPDATE``;
SQLite: the ``BEGIN IMMEDIATE`` write lock), then reads the lease row: a lease action and a write
to the same context are ordered, on every process and instance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final, LiteralString

from groundhog_mcp.errors import LeasedError, NotFoundError
from groundhog_mcp.models import Change, ContextId, format_timestamp, utcnow
from groundhog_mcp.store.adapter import ChangeWrite, Row, StoreAdapter, Tx, marks
from groundhog_mcp.store.base import AuditEntry, AuditNote
from groundhog_mcp.store.rows import Lease, LeaseAction, LeaseGrant, as_id, as_time

__all__ = ["Lease", "LeaseAction", "LeaseGrant", "Leasing", "check_fence"]


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
            row = await tx.fetchone(
                f"SELECT id, revision FROM contexts WHERE namespace = %s AND name = %s AND {self._live}"
                + self.FOR_UPDATE,
                (namespace, name),
            )
            if row is None:
                raise NotFoundError(f"name: no context named {name!r}")
            context_id, revision = as_id(row[0]), int(row[1])
            current = await self._read_lease(tx, context_id)
            now = utcnow()
            if action == "take":
                if current is not None and current.held(now):
                    raise LeasedError(
                        f"name: context {name!r} is leased by {current.holder!r} until "
                        f"{format_timestamp(_at(current))}; retry with wait_seconds to queue for it",
                        holder=current.holder,
                        expires_at=current.expires_at,
                    )
                after = Lease(context_id, (current.token if current else 0) + 1, holder, now + _ttl(ttl_seconds))
            else:
                if action == "release" and current is not None and current.token == token and current.holder is None:
                    return LeaseGrant(current, False, None)  # released already: nothing to do
                if action == "release" and current is not None and current.token == token:
                    after = dataclasses.replace(current, holder=None, expires_at=None)  # expired or not
                else:
                    check_fence(name, current, token, now)  # renew: only the live lease's token
                    assert current is not None
                    after = dataclasses.replace(current, expires_at=now + _ttl(ttl_seconds))
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
                    revision=revision,
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
            change = Change(sequence, context_id, namespace, name, revision, op, actor, now, None)
            if self.audit_signer is not None:
                until = f" until {format_timestamp(after.expires_at)}" if after.expires_at is not None else ""
                who = after.holder or (current.holder if current is not None else None) or holder
                detail = f"token {after.token}, holder {who!r}{until}"
                note = AuditNote(audit.request_id if audit else None, detail)
                await self._append_audit(tx, AuditEntry.of_change(change, note), head, now)
            return LeaseGrant(after, after.holder is not None, change)

        return await self._transaction(work, writing=True)


def _ttl(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)
