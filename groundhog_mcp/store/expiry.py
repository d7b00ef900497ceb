"""Context expiry, written once for both backends.

A context may expire: at a fixed time (its settings' ``expires_at``), or when it was not written
for ``expire_after_idle_seconds`` (settings too), whichever comes first. The store keeps that
deadline in ``contexts.expires_at``, set at registration and moved by every write. Every read of
a live context leaves out an expired one (it reads exactly as a missing one), so nothing has to
run on time. Its removal is recorded like an unregister (a new revision, op ``expired`` in the
change feed, an audit row; history kept per retention) when it is next touched: by a read that
misses it (:meth:`Expiry.expire`), by a registration of its name, or by a sweep.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from groundhog_mcp.models import Change, JSONObject, parse_timestamp, utcnow
from groundhog_mcp.store.adapter import Row, StoreAdapter, Tx
from groundhog_mcp.store.base import AuditNote

if TYPE_CHECKING:
    from groundhog_mcp.store.rows import StoredContext

__all__ = ["EXPIRY_ACTOR", "Expiry", "expiry_deadline"]

EXPIRY_ACTOR = "expiry"
"""The actor of a removal by a sweep (a removal on access is recorded as the caller's)."""


def expiry_deadline(settings: JSONObject, now: datetime) -> datetime | None:
    """When a context with these settings, written at ``now``, expires (None: never). The service
    checked the values at registration (``expires_at`` RFC 3339, ``expire_after_idle_seconds`` > 0)."""
    deadlines: list[datetime] = []
    fixed = settings.get("expires_at")
    if isinstance(fixed, str):
        deadlines.append(parse_timestamp(fixed))
    idle = settings.get("expire_after_idle_seconds")
    if isinstance(idle, int | float) and not isinstance(idle, bool):
        deadlines.append(now + timedelta(seconds=idle))
    return min(deadlines) if deadlines else None


class Expiry(StoreAdapter):
    """The removal of expired contexts, for :class:`~groundhog_mcp.store.core.StoreCore`."""

    async def _remove(
        self, tx: Tx, row: Row, current: StoredContext, op: str, *, purge: bool, actor: str, audit: AuditNote | None
    ) -> Change:
        raise NotImplementedError  # the core's removal, shared with unregister

    async def _remove_expired(
        self, tx: Tx, namespace: str, name: str, actor: str, audit: AuditNote | None
    ) -> Change | None:
        """Remove context ``name`` if it is live but expired (in the caller's write transaction)."""
        row = await tx.fetchone(
            f"SELECT {self._context_select} FROM contexts WHERE namespace = %s AND name = %s"
            f" AND deleted_at IS NULL AND expires_at <= {self.NOW}" + self.FOR_UPDATE,
            (namespace, name),
        )
        if row is None:
            return None
        current = await self._context(row)
        return await self._remove(tx, row, current, "expired", purge=False, actor=actor, audit=audit)

    async def expire(self, namespace: str, name: str, *, actor: str, audit: AuditNote | None = None) -> Change | None:
        """Record the removal of context ``name`` if it expired and was not removed yet (the change,
        else None). A read-only look first: a missing name costs no write lock."""
        due = await self._transaction(
            lambda tx: tx.fetchone(
                "SELECT 1 FROM contexts WHERE namespace = %s AND name = %s"
                f" AND deleted_at IS NULL AND expires_at <= {self.NOW}",
                (namespace, name),
            ),
            writing=False,
        )
        if due is None:
            return None
        return await self._transaction(lambda tx: self._remove_expired(tx, namespace, name, actor, audit), writing=True)

    async def sweep(self, *, limit: int = 1000, actor: str = EXPIRY_ACTOR) -> list[Change]:
        """Remove up to ``limit`` expired contexts of any namespace, one transaction each, and the
        rows of lease waiters that stopped waiting; the removals made (fewer than ``limit``: none
        is left)."""
        rows = await self._transaction(
            lambda tx: tx.fetchall(
                "SELECT namespace, name FROM contexts WHERE deleted_at IS NULL AND expires_at IS NOT NULL"
                f" AND expires_at <= {self.NOW} ORDER BY expires_at LIMIT %s",
                (limit,),
            ),
            writing=False,
        )
        # Waiters for a lease whose wait ended (or whose process died) and whose line was not
        # used since: their rows go too.
        await self._transaction(
            lambda tx: tx.execute("DELETE FROM lease_waiters WHERE alive_until <= %s", (utcnow(),)), writing=True
        )
        removed: list[Change] = []
        for namespace, name in rows:
            change = await self.expire(str(namespace), str(name), actor=actor)
            if change is not None:
                removed.append(change)
        return removed
