"""A PostgreSQL transaction whose statements travel in batches: one round trip per result needed.

The store core writes a transaction as a sequence of statements (:class:`~groundhog_mcp.store.adapter.Tx`).
Most of them return nothing the core reads (an ``UPDATE``, an ``INSERT`` without ``RETURNING``):
:class:`PgBatchTx` holds those back and sends them, bound client-side, in one simple-protocol
message with the next statement whose rows the core needs, or with the ``COMMIT``; a held-back
statement whose row the backend wants (:meth:`PgBatchTx.later`) hands it over when its message
returns. A write is then two or three round trips (:mod:`~groundhog_mcp.store.pg_change`)
instead of seven, and a read is one: ``BEGIN``, the transaction-local settings, the query and
``COMMIT`` in one message. An error in a held-back statement surfaces at the next
send, inside the same transaction, which then rolls back whole: nothing changes for the core.

Why not psycopg's pipeline mode: leaving it costs a ``Sync`` round trip of its own on every
transaction, so a read would still take two round trips. Client-side binding is psycopg's
(``ClientCursor``, escaping by libpq), and the simple protocol is what pgbouncer handles best.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, LiteralString, cast

import psycopg
from psycopg import AsyncClientCursor, AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow

from groundhog_mcp.store.adapter import Params, Row

__all__ = ["COMMIT", "PgBatchTx", "Statement", "abandon", "outside_pool"]

Statement = tuple[LiteralString, Params]
COMMIT: Statement = ("COMMIT", ())
Receiver = Callable[[Row | None], None]


class PgBatchTx:
    """The core's :class:`~groundhog_mcp.store.adapter.Tx` on an autocommit connection.

    ``opening`` is ``BEGIN`` and the transaction-local settings. ``autonomous``: every query is a
    transaction of its own (``opening``, the query, ``COMMIT`` in one message) — for reads, which
    in ``READ COMMITTED`` see a fresh snapshot per statement anyway. Otherwise the statements
    form one transaction, ended by :meth:`commit`.
    """

    __slots__ = ("_autonomous", "_cur", "_opening", "_pending", "_receivers", "round_trips")

    def __init__(self, cur: AsyncClientCursor[TupleRow], opening: list[Statement], *, autonomous: bool) -> None:
        self._cur = cur
        self._opening = opening
        self._autonomous = autonomous
        self._pending: list[Statement] = [] if autonomous else list(opening)
        # Held-back statements whose first row someone wants: their index in _pending.
        self._receivers: dict[int, Receiver] = {}
        self.round_trips = 0

    async def execute(self, sql: LiteralString, params: Params = ()) -> None:
        if self._autonomous:
            await self._send([*self._opening, (sql, params), COMMIT])
        else:
            self._pending.append((sql, params))

    def later(self, sql: LiteralString, params: Params, receive: Receiver) -> None:
        """Hold back a statement like :meth:`execute`, and hand its first row (None: no row) to
        ``receive`` when the message that carries it comes back: a result read without a round
        trip of its own (the change's reservation, sent with the locked row's read)."""
        if self._autonomous:
            raise RuntimeError("a statement held back for its row needs a transaction of statements")
        self._receivers[len(self._pending)] = receive
        self._pending.append((sql, params))

    async def executemany(self, sql: LiteralString, rows: Sequence[Sequence[Any]]) -> None:
        await self._send_pending()
        self.round_trips += 1
        await self._cur.executemany(sql, rows)

    async def fetchone(self, sql: LiteralString, params: Params = ()) -> TupleRow | None:
        await self._query(sql, params)
        return await self._cur.fetchone()

    async def fetchall(self, sql: LiteralString, params: Params = ()) -> list[TupleRow]:
        await self._query(sql, params)
        return await self._cur.fetchall()

    async def insert(self, sql: LiteralString, params: Params, key: LiteralString) -> int:
        row = await self.fetchone(f"{sql} RETURNING {key}", params)
        return int(row[0]) if row else 0

    async def commit(self) -> None:
        """Send what is held back with ``COMMIT`` (nothing to do for an autonomous one)."""
        if not self._autonomous:
            self._pending.append(COMMIT)
            await self._send_pending()

    async def _query(self, sql: LiteralString, params: Params) -> None:
        """Send the held-back statements and this query, and stand on the query's result."""
        query: Statement = (sql, params)
        if self._autonomous:
            batch = [*self._opening, query, COMMIT]
        else:
            batch, self._pending = [*self._pending, query], []
        await self._send(batch)
        await self._deliver(len(batch) - (2 if self._autonomous else 1))

    async def _send_pending(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            await self._send(batch)
            await self._deliver(len(batch))

    async def _deliver(self, count: int) -> None:
        """Move past the first ``count`` results of the message just sent, handing the rows
        of statements held back for their row (:meth:`later`) to their receivers."""
        receivers, self._receivers = self._receivers, {}
        for index in range(count):
            receive = receivers.get(index)
            if receive is not None:
                receive(await self._cur.fetchone())
            self._cur.nextset()

    async def _send(self, batch: list[Statement]) -> None:
        cur = self._cur
        # Bound by mogrify (libpq's escaping): the statements as they would run, one message.
        text = cast(LiteralString, "; ".join(cur.mogrify(sql, params) for sql, params in batch))
        self.round_trips += 1
        await cur.execute(text)


def outside_pool(cur: AsyncClientCursor[TupleRow]) -> PgBatchTx:
    """A Tx on a connection outside the pool, whose transaction psycopg begins and its owner ends."""
    return PgBatchTx(cur, [], autonomous=False)


async def abandon(conn: AsyncConnection[TupleRow]) -> None:
    """Roll back what a failed unit of work left open (a connection that broke is replaced)."""
    if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        with contextlib.suppress(psycopg.Error):
            await conn.rollback()
