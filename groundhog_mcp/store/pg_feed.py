"""The PostgreSQL change feed: every change exactly once, in ``sequence`` order, with no
store-wide lock on the write path.

A write takes its ``sequence`` from the ``change_sequence`` SEQUENCE, which hands numbers out
without a lock: writes in different namespaces never wait on one row. The price is that
numbers may commit out of order (6 before 5) and that a rollback after ``nextval`` leaves a gap
for good. A reader that followed ``sequence > cursor`` naively would, having seen 6, skip 5 when
it commits later. So the feed only hands out changes up to its *visibility horizon*:

* a number is **final** once its change is visible or can no longer appear;
* a change is handed out when every number between it and the previous one is final;
* a gap is settled (:meth:`FeedHorizon.settle`): read the last number handed out (``L``), then
  the writers in flight, and wait until those have ended. Every write takes a shared advisory
  lock (``FEED_LOCK``, the in-flight marker, never waited for) *before* its ``nextval``, in the
  same statement, and holds it to its end: a writer that holds a number up to ``L`` and has not
  ended is among them. When they are gone, every number up to ``L`` is final.

Settling waits only for writes already past their ``nextval`` (a round trip and a commit,
usually: store/pg_change.py takes the number once the write is known to go ahead, and after
its namespace's audit chain head), never for writes that start later. A gap that is not a write in flight (a rollback,
or change rows pruned with their history) costs one settle; a gap whose write commits is
filled by the next read, which its ``NOTIFY`` triggers.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, Final, LiteralString, TypeVar

from groundhog_mcp.errors import StoreBusyError
from groundhog_mcp.models import Change
from groundhog_mcp.store.adapter import Tx

__all__ = ["FEED_LOCK", "FeedHorizon"]

_T = TypeVar("_T")
Transaction = Callable[[Callable[[Tx], Awaitable[Any]]], Awaitable[Any]]

# The advisory-lock class of the in-flight marker ("ghmf"); the second key is the schema's.
_FEED_LOCK_CLASS: Final = 0x67686D66
# Taken in the change statement before nextval (see the module docstring).
FEED_LOCK: Final = "pg_advisory_xact_lock_shared(%(feed_class)s::integer, %(feed_key)s::integer)"
_LAST_HANDED_OUT: LiteralString = "SELECT pg_sequence_last_value(to_regclass('change_sequence'))"
_IN_FLIGHT: LiteralString = (
    "SELECT coalesce(array_agg(virtualtransaction), '{}') FROM pg_locks WHERE locktype = 'advisory'"
    " AND classid = %s::bigint::oid AND objid = %s::bigint::oid AND objsubid = 2"
)
_STILL_IN_FLIGHT: LiteralString = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::bigint::oid"
    " AND objid = %s::bigint::oid AND objsubid = 2 AND virtualtransaction = ANY(%s::text[])"
)
_FIRST_WAIT_S = 0.0005
_LONGEST_WAIT_S = 0.02


class FeedHorizon:
    """What one store knows of the change sequence: every number up to :attr:`final` is final."""

    def __init__(self, schema: str | None, transaction: Transaction, *, wait_limit_ms: int) -> None:
        # A signed 32-bit key per schema; a collision only makes a settle wait for more writers.
        key = zlib.crc32((schema or "").encode("utf-8"))
        self.key = key - 2**32 if key >= 2**31 else key
        self._transaction = transaction
        self._wait_limit_s = wait_limit_ms / 1000
        self.final = 0

    def parameters(self) -> dict[str, int]:
        """The change statement's parameters for :data:`FEED_LOCK`."""
        return {"feed_class": _FEED_LOCK_CLASS, "feed_key": self.key}

    async def settle(self) -> int:
        """Wait until every number handed out so far is final; return the last one (0: none)."""

        async def capture(tx: Tx) -> tuple[int, list[str]]:
            # In this order: a writer holding a number up to `last` holds its marker by now.
            last = await tx.fetchone(_LAST_HANDED_OUT)
            writers = await tx.fetchone(_IN_FLIGHT, self._lock_ids())
            return int(last[0]) if last and last[0] is not None else 0, list(writers[0]) if writers else []

        last, writers = await self._transaction(capture)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_limit_s
        delay = _FIRST_WAIT_S
        while writers:
            if loop.time() >= deadline:
                raise StoreBusyError(
                    f"database: writes in flight for more than busy_timeout={round(self._wait_limit_s * 1000)} ms "
                    "kept the change feed from moving on; nothing was read, retry the call"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _LONGEST_WAIT_S)
            row = await self._transaction(lambda tx: tx.fetchone(_STILL_IN_FLIGHT, (*self._lock_ids(), writers)))
            if row is None or int(row[0]) == 0:
                break
        self.final = max(self.final, last)
        return last

    async def read(self, cursor: int, read: Callable[[], Awaitable[list[Change]]]) -> tuple[list[Change], bool]:
        """The changes of ``read()`` (after ``cursor``, in sequence order) that may be handed out,
        settling once if a gap holds them back; and whether some are still held back."""
        changes = await read()
        ready = self._ready(cursor, changes)
        if len(ready) < len(changes):
            await self.settle()
            changes = await read()
            ready = self._ready(cursor, changes)
        if ready:
            self.final = max(self.final, ready[-1].sequence)
        return ready, len(ready) < len(changes)

    def _ready(self, cursor: int, changes: list[Change]) -> list[Change]:
        ready: list[Change] = []
        previous = cursor
        for change in changes:
            # The numbers between the previous change and this one must all be final.
            if change.sequence - 1 > max(previous, self.final):
                break
            ready.append(change)
            previous = change.sequence
        return ready

    def _lock_ids(self) -> tuple[int, int]:
        return _FEED_LOCK_CLASS, self.key % 2**32
