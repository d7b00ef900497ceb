"""PostgreSQL backend: a psycopg 3 async pool, one transaction per write, safe behind pgbouncer.

``PostgresStore("postgresql://user@host:5432/db?schema=groundhog")``: the ``schema`` query
parameter (or ``pg_schema=``, which wins) names the PostgreSQL schema holding the tables;
it is created at the first migration when missing. Without it the server's
``search_path`` decides. ``pool_max_size`` / ``pool_min_size`` (connections in the pool,
default 4 / 1) and ``listen_url`` (below) are ours too, as URL parameters or arguments (an
argument wins); every other URL parameter goes to libpq unchanged.

No session state outlives a transaction, so pgbouncer in ``pool_mode = transaction``
works: statements are never prepared server-side (``prepare_threshold=None``) and each
transaction starts with ``set_config(…, true)`` for ``search_path``, ``statement_timeout``,
``lock_timeout`` and ``idle_in_transaction_session_timeout`` (transaction-local).

A write is one transaction of the store core's write sequence (:mod:`groundhog_mcp.store.core`):
``SELECT … FOR UPDATE`` on the live context row (a register locks the name's
``name_revisions`` row instead), check ``expected_revision``, run the mutator, write the
state, take the ``sequence`` from the ``change_sequence`` SEQUENCE, write the change and the
history snapshot, the audit row, commit. Its statements travel in two round trips when the
store's guess of the context holds (it remembers the contexts it last wrote), three otherwise
(:mod:`~groundhog_mcp.store.pg_change`, :mod:`~groundhog_mcp.store.pg_tx`); a read is one. No
row is locked by every write: writes to different contexts, in any namespace, never wait for
each other (with the audit log on, writes of one namespace take turns at its audit chain's
head). Sequences are never reused but may commit out of order; the change feed hands them out
in order all the same (:mod:`~groundhog_mcp.store.pg_feed`).

Nothing waits forever: ``connect_timeout``, TCP keepalives, a pool wait timeout and the
server-side timeouts above bound every call. A connection lost before commit is replaced
and the call retried (twice at most: after a server restart every pooled connection is dead,
and one in use elsewhere comes back dead after the pool was checked); a connection lost
during commit is reported as such, because the outcome is then unknown.

Several instances on one database hear of each other's commits: every write sends
``NOTIFY groundhog_changes, '<sequence>'`` in its transaction (delivered only if it
commits), and every store ``LISTEN``s on a dedicated connection outside the pool, which it
re-establishes with backoff when it drops. An announcement only wakes the change feed,
which reads from its last ``sequence``: a lost one costs a fallback poll, never a change.
``LISTEN`` needs a session that stays with this client, which pgbouncer in transaction mode
does not give: point ``listen_url=`` (a URL parameter, or the argument) at the server
itself or at a session-mode pool; by default it is the database URL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final, LiteralString, TypeVar

import psycopg
import structlog
from psycopg import AsyncClientCursor, AsyncConnection, AsyncCursor, errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg.types.string import TextLoader
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from groundhog_mcp.errors import ContextError, InitializationError, StateUpdateError, StoreBusyError
from groundhog_mcp.files import PrivateOutput
from groundhog_mcp.models import Change, ContextId, dumps, utcnow
from groundhog_mcp.store.adapter import AuditHead, ChangeWrite, Reservation, Row, Runner, Tx
from groundhog_mcp.store.base import SEALED_MAGIC, AuditSigner, RecordCipher, Retention, StoreStatus
from groundhog_mcp.store.codec import SealedColumn
from groundhog_mcp.store.core import StoreCore
from groundhog_mcp.store.migrations import LATEST_SCHEMA_VERSION, MIGRATIONS
from groundhog_mcp.store.pg_change import AUDIT_APPEND, AUDIT_LOCK_HEAD, RECORD, RECORD_RESERVED, reserve_statement
from groundhog_mcp.store.pg_errors import newer_schema, nothing, translate
from groundhog_mcp.store.pg_feed import FeedHorizon
from groundhog_mcp.store.pg_session import (
    CHANGES_CHANNEL,
    SCHEMA_NAME,
    ChangeListener,
    cancel_requests,
    deliver_swallowed_cancel,
    first_line,
    literal_identifier,
    location_of,
    pool_size,
    split_parameters,
)
from groundhog_mcp.store.pg_tx import PgBatchTx, Statement, abandon, outside_pool
from groundhog_mcp.store.records import ImportRows
from groundhog_mcp.store.rows import AuditRecord, StoredContext
from groundhog_mcp.store.search import POSTGRES_SEARCH, budget_exceeded

__all__ = ["CHANGES_CHANNEL", "PostgresStore"]

log = structlog.get_logger("groundhog_mcp.store.postgres")

_T = TypeVar("_T")
_Cursor = AsyncCursor[TupleRow]
_Connection = AsyncConnection[TupleRow]

# The advisory-lock namespace of groundhog-mcp ("ghmc"); the second key is the schema.
_MIGRATION_LOCK_CLASS = 0x67686D63
_EXPORT_PAGE = 500
_TABLES: Final[dict[str, LiteralString]] = {"events": "events", "dead_letters": "dead_letters"}
# A transaction whose connection turned out dead before commit is run this many times at most.
_ATTEMPTS = 3
_BEGIN: Statement = ("BEGIN", ())
# The contexts remembered as last written (a guess for the next write: store/pg_change.py),
# and the largest state remembered; a larger one is written in three round trips.
_REMEMBERED = 256
_REMEMBER_BYTES = 16 * 1024


def _head(row: Row, at: int) -> AuditHead | None:
    """The audit chain head (the log's sequence, the chain position, the last HMAC) a statement
    returned from column ``at`` on; None when it took none (the audit log is off)."""
    return (int(row[at]), int(row[at + 1]), str(row[at + 2])) if row[at] is not None else None


async def _configure(conn: _Connection) -> None:
    # json columns arrive as their exact text: we choose where (and whether) to parse them.
    conn.adapters.register_loader("json", TextLoader)


class PostgresStore(StoreCore):
    """Several groundhog-mcp instances on one PostgreSQL database (extra ``[postgres]``).

    ``busy_timeout_ms`` bounds a wait for a row lock (``lock_timeout``), like SQLite's busy
    timeout; ``statement_timeout_ms`` bounds any statement; ``connect_timeout_s`` bounds a
    new connection and a wait for a pooled one is bounded by ``pool_timeout_s``.
    """

    backend = "postgres"
    # Contents are json/text; a sealed value goes to a bytea column beside (history snapshots
    # are bytea already and hold either form in place).
    SEARCH = POSTGRES_SEARCH
    SEALED_SIDE: dict[str, LiteralString] = {
        "contexts.state": "state_sealed",
        "changes.patch": "patch_sealed",
        "events.payload": "payload_sealed",
        "dead_letters.payload": "payload_sealed",
        "dead_letters.last_error": "last_error_sealed",
    }
    FOR_UPDATE: LiteralString = " FOR UPDATE"
    REREAD_AFTER_LOCK = True
    NOW: LiteralString = "statement_timestamp()"
    _IMPORT_TARGET = "a new, empty database or schema"

    def __init__(
        self,
        url: str,
        *,
        pg_schema: str | None = None,
        busy_timeout_ms: int = 5000,
        statement_timeout_ms: int = 30_000,
        connect_timeout_s: int = 5,
        pool_min_size: int | None = None,
        pool_max_size: int | None = None,
        pool_timeout_s: float = 10.0,
        auto_migrate: bool = True,
        listen_url: str | None = None,
        retention: Retention | None = None,
        audit_signer: AuditSigner | None = None,
        cipher: RecordCipher | None = None,
    ) -> None:
        super().__init__(retention=retention, audit_signer=audit_signer, cipher=cipher)
        try:
            libpq_url, ours = split_parameters(url)
            params = conninfo_to_dict(libpq_url)
            listen_libpq_url = split_parameters(listen_url or ours.get("listen_url") or libpq_url)[0]
            listen_params = conninfo_to_dict(listen_libpq_url)
        except (psycopg.ProgrammingError, ValueError) as exc:
            raise InitializationError(
                f"database: not a usable PostgreSQL connection string ({first_line(exc)})"
            ) from exc
        schema = pg_schema if pg_schema is not None else ours.get("schema")
        pool_max_size = pool_max_size or pool_size(ours, "pool_max_size", 4)
        pool_min_size = pool_min_size or pool_size(ours, "pool_min_size", 1)
        if not 1 <= pool_min_size <= pool_max_size:
            raise InitializationError(
                f"database: pool_min_size={pool_min_size} must be between 1 and pool_max_size={pool_max_size}"
            )
        if schema is not None and not SCHEMA_NAME.fullmatch(schema):
            raise InitializationError(
                f"database: schema {schema!r} is not a plain PostgreSQL identifier "
                "(letters, digits and _, starting with a letter or _, at most 63 characters)"
            )
        defaults: dict[str, Any] = {
            "connect_timeout": max(2, int(connect_timeout_s)),
            "application_name": "groundhog-mcp",
            # A peer that vanished without a FIN is noticed in about a minute, not hours.
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
        self._conninfo = make_conninfo(libpq_url, **{k: v for k, v in defaults.items() if k not in params})
        self._listen_conninfo = make_conninfo(
            listen_libpq_url, **{k: v for k, v in defaults.items() if k not in listen_params}
        )
        self.pg_schema = schema
        self.location = location_of(params, schema)
        self.listen_location = location_of(listen_params, None)
        self.busy_timeout_ms = busy_timeout_ms
        self.statement_timeout_ms = statement_timeout_ms
        self.connect_timeout_s = max(2, int(connect_timeout_s))
        self.pool_min_size = pool_min_size
        self.pool_max_size = pool_max_size
        self.pool_timeout_s = pool_timeout_s
        self.auto_migrate = auto_migrate
        self._pool: AsyncConnectionPool[_Connection] | None = None
        self.round_trips = 0  # of the units of work so far (benchmarks and tests count them)
        self._listener: asyncio.Task[None] | None = None
        self._changes = ChangeListener(self._listen_conninfo, self.listen_location)
        self._reserve_sql: LiteralString = reserve_statement(self._live)
        # The contexts as this store last wrote them, for a write's guess (core.mutate).
        self._written: dict[tuple[str, str], StoredContext] = {}
        self._horizon = FeedHorizon(
            f"{params.get('dbname') or ''}.{schema or ''}",
            lambda work: self._transaction(work, writing=False),
            wait_limit_ms=busy_timeout_ms,
        )

    # -- plumbing ---------------------------------------------------------------------------

    def _preamble(
        self,
        *,
        lock_timeout_ms: int | None = None,
        idle_timeout_ms: int | None = None,
        statement_timeout_ms: int | None = None,
    ) -> Statement:
        """The first statement of every transaction: transaction-local settings only."""
        statement_timeout_ms = self.statement_timeout_ms if statement_timeout_ms is None else statement_timeout_ms
        lock_timeout_ms = self.busy_timeout_ms if lock_timeout_ms is None else lock_timeout_ms
        idle_timeout_ms = self.statement_timeout_ms if idle_timeout_ms is None else idle_timeout_ms
        query: LiteralString = (
            "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true),"
            " set_config('idle_in_transaction_session_timeout', %s, true)"
        )
        params = [str(statement_timeout_ms), str(lock_timeout_ms), str(idle_timeout_ms)]
        if self.pg_schema is not None:
            query += ", set_config('search_path', %s, true)"
            params.append(f'"{self.pg_schema}"')
        return query, params

    async def _begin(self, cur: _Cursor, *, lock_timeout_ms: int | None = None) -> None:
        """The preamble on a connection outside the pool (its transaction begins implicitly)."""
        query, params = self._preamble(lock_timeout_ms=lock_timeout_ms)
        await cur.execute(query, params)

    async def _connect(self) -> _Connection:
        """A connection outside the pool (open, migrate): its failure says exactly what is wrong."""
        try:
            conn = await psycopg.AsyncConnection.connect(self._conninfo, prepare_threshold=None, autocommit=False)
        except psycopg.Error as exc:
            raise InitializationError(
                f"database: cannot connect to PostgreSQL at {self.location}: {first_line(exc)}"
            ) from exc
        await _configure(conn)
        return conn

    async def _run(
        self, work: Callable[[PgBatchTx], Awaitable[_T]], *, writing: bool, statement_timeout_ms: int | None = None
    ) -> _T:
        """Run ``work`` in one transaction on a pooled connection and commit (a read: each of its
        queries a transaction of its own, see :class:`~groundhog_mcp.store.pg_tx.PgBatchTx`).

        A connection found dead before commit (server restart, ``pg_terminate_backend``,
        network) is replaced and the transaction run again (at most twice): nothing of it was
        committed, and a mutator is pure, so that is safe.
        """
        if self._pool is None:
            raise InitializationError("database: the store is not open")
        pool = self._pool
        requested = cancel_requests()
        for attempt in range(1, _ATTEMPTS + 1):
            committing = False
            conn: _Connection | None = None
            try:
                async with pool.connection() as conn:
                    deliver_swallowed_cancel(requested)
                    try:
                        async with AsyncClientCursor(conn) as cur:
                            opening = [_BEGIN, self._preamble(statement_timeout_ms=statement_timeout_ms)]
                            tx = PgBatchTx(cur, opening, autonomous=not writing)
                            try:
                                result = await work(tx)
                                committing = True
                                await tx.commit()
                            finally:
                                self.round_trips += tx.round_trips
                        return result
                    except BaseException:
                        await abandon(conn)
                        raise
            except PoolClosed as exc:
                raise InitializationError("database: the store is not open (it was closed)") from exc
            except PoolTimeout as exc:
                raise StoreBusyError(
                    f"database: no connection to PostgreSQL at {self.location} within "
                    f"pool_timeout={self.pool_timeout_s:g} s (server unreachable, or all {self.pool_max_size} "
                    f"pooled connections busy); {nothing(writing)}, retry the call"
                ) from exc
            except psycopg.OperationalError as exc:
                lost = conn is not None and (conn.broken or conn.closed)
                if lost and committing and writing:
                    raise StateUpdateError(
                        f"database: the connection to PostgreSQL at {self.location} was lost while committing "
                        f"({first_line(exc)}); the write may or may not have been applied: re-read the "
                        "context before retrying"
                    ) from exc
                if lost and attempt < _ATTEMPTS:
                    await pool.check()  # drop every dead idle connection, not just this one
                    continue
                raise self._translate(exc, writing) from exc
            except psycopg.Error as exc:
                raise self._translate(exc, writing) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, exc: psycopg.Error, writing: bool) -> ContextError:
        return translate(exc, writing, self.location, self.busy_timeout_ms, self.statement_timeout_ms)

    async def _transaction(self, work: Callable[[Tx], Awaitable[_T]], *, writing: bool) -> _T:
        return await self._run(work, writing=writing)

    async def _bounded_read(self, work: Callable[[Tx], Awaitable[_T]], budget_ms: int) -> _T:
        async def bounded(tx: PgBatchTx) -> _T:
            try:
                return await work(tx)
            except errors.QueryCanceled:
                raise budget_exceeded(budget_ms) from None

        # One transaction, not one per query (a read's way): its opening carries the budget.
        timeout_ms = min(budget_ms, self.statement_timeout_ms)
        return await self._run(bounded, writing=True, statement_timeout_ms=timeout_ms)

    @contextlib.asynccontextmanager
    async def _snapshot(self) -> AsyncGenerator[Runner]:
        """One REPEATABLE READ, read-only transaction for every page: a consistent export."""
        if self._pool is None:
            raise InitializationError("database: the store is not open")
        requested = cancel_requests()
        try:
            async with self._pool.connection() as conn, AsyncClientCursor(conn) as cur:
                deliver_swallowed_cancel(requested)
                # The consumer may be slow (a pipe): no idle-in-transaction limit here.
                opening: Statement = ("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", ())
                tx = PgBatchTx(cur, [opening, self._preamble(idle_timeout_ms=0)], autonomous=False)

                async def run(work: Callable[[Tx], Awaitable[Any]]) -> Any:
                    return await work(tx)

                try:
                    yield run
                    await tx.commit()
                except BaseException:
                    await abandon(conn)
                    raise
        except PoolTimeout as exc:
            raise StoreBusyError(
                f"database: no connection to PostgreSQL at {self.location} within {self.pool_timeout_s:g} s; "
                "nothing was exported, retry"
            ) from exc
        except psycopg.Error as exc:
            raise self._translate(exc, False) from exc

    async def _compute(self, size: int | None, fn: Callable[..., _T], *args: Any) -> _T:
        """In a thread for a large state (or ``size`` None), inline otherwise (a hop costs more)."""
        if size is None or size > self.INLINE_BYTES:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    @property
    def _where(self) -> str:
        return self.location

    # -- the statements whose SQL is PostgreSQL's ---------------------------------------------

    def _recall(self, namespace: str, name: str) -> StoredContext | None:
        return self._written.get((namespace, name))

    def _remember(self, context: StoredContext) -> None:
        key = (context.namespace, context.name)
        self._written.pop(key, None)
        if context.state_size <= _REMEMBER_BYTES:
            self._written[key] = context
            if len(self._written) > _REMEMBERED:
                del self._written[next(iter(self._written))]  # the least recently written

    def _reserve(self, tx: Tx, namespace: str, name: str, reservation: Reservation) -> None:
        """The change's numbers and audit head, sent with the read of the locked row (see
        :mod:`~groundhog_mcp.store.pg_change`): its audit row can then travel with ``COMMIT``."""

        def receive(row: Row | None) -> None:
            if row is not None:
                reservation.sequence = int(row[0])
                reservation.head = _head(row, 1)

        assert isinstance(tx, PgBatchTx)
        parameters = {
            "namespace": namespace,
            "name": name,
            "id": reservation.context_id,
            "revision": reservation.revision,
            "token": reservation.lease_token,
            "audit": self.audit_signer is not None,
            **self._horizon.parameters(),
        }
        tx.later(self._reserve_sql, parameters, receive)

    async def _append_change(self, tx: Tx, write: ChangeWrite) -> tuple[int, AuditHead | None]:
        """The change row, the history snapshot and the event record, the key note and the
        NOTIFY in one statement, with the sequence (and, with the audit log on, the chain head's
        row lock, held to commit) reserved with the locked row's read, or taken here
        (:mod:`~groundhog_mcp.store.pg_change`)."""
        patch, patch_sealed = self._values("changes.patch", write.patch)
        payload, payload_sealed = self._values("events.payload", write.payload)
        parameters = {
            "id": write.context_id,
            "namespace": write.namespace,
            "name": write.name,
            "revision": write.revision,
            "op": write.op,
            "actor": write.actor,
            "now": write.now,
            "patch": patch,
            "patch_sealed": patch_sealed,
            "size": write.size,
            "snapshot": write.snapshot,
            "event_type": write.event.type if write.event is not None else None,
            "payload": payload,
            "payload_sealed": payload_sealed,
            "key_id": self.codec.key_id,
            "key": write.event.idempotency_key if write.event is not None else None,
            "channel": CHANGES_CHANNEL,
        }
        reserved = write.reserved
        if reserved is not None and reserved.sequence is not None:
            # Nothing to wait for: sent with the audit row and COMMIT.
            await tx.execute(RECORD_RESERVED, {**parameters, "sequence": reserved.sequence})
            self._changes.committed(reserved.sequence)
            return reserved.sequence, reserved.head
        counter = await tx.fetchone(
            RECORD, {**parameters, "audit": self.audit_signer is not None, **self._horizon.parameters()}
        )
        if counter is None:  # pragma: no cover - the statement always returns its one row
            raise InitializationError(f"database: the change statement returned nothing at {self.location}")
        sequence = int(counter[0])
        self._changes.committed(sequence)
        return sequence, _head(counter, 2)

    async def _audit_head(self, tx: Tx, namespace: str) -> AuditHead:
        row = await tx.fetchone(AUDIT_LOCK_HEAD, {"namespace": namespace})
        head = _head(row, 0) if row is not None else None
        if head is None:  # pragma: no cover - the upsert always returns its row
            raise InitializationError(f"database: no audit chain head for a namespace at {self.location}")
        return head

    async def _chain_heads(self, tx: Tx, namespace: str | None) -> list[Row]:
        if namespace is None:
            return await tx.fetchall("SELECT namespace, position, hmac FROM audit_heads")
        return await tx.fetchall("SELECT namespace, position, hmac FROM audit_heads WHERE namespace = %s", (namespace,))

    async def _insert_audit(self, tx: Tx, record: AuditRecord) -> None:
        values = (record.sequence, record.timestamp, *record.stored_values())
        await tx.execute(AUDIT_APPEND, (record.hmac, record.namespace, *values))

    async def _reserve_dead_letter_id(self, tx: Tx) -> int:
        row = await tx.fetchone("SELECT nextval(pg_get_serial_sequence('dead_letters', 'id'))")
        return int(row[0]) if row else 0

    async def _import_bounds(self, tx: Tx, rows: ImportRows | None) -> int:
        if rows is None:
            # A concurrent writer (its change row) or importer waits for this import.
            await tx.execute("LOCK TABLE changes IN SHARE ROW EXCLUSIVE MODE")
            return 0
        # The sequence and the event and dead letter ids continue after everything imported.
        counter = await tx.fetchone(
            "SELECT v, setval('change_sequence', greatest(v, 1), v > 0), pg_notify(%s, v::text) FROM (SELECT"
            " greatest(coalesce(pg_sequence_last_value('change_sequence'), 0),"
            " (SELECT coalesce(max(sequence), 0) FROM changes),"
            " (SELECT coalesce(max(sequence), 0) FROM history)) AS v) AS imported",
            (CHANGES_CHANNEL,),
        )
        for table in ("events", "dead_letters"):
            await tx.execute(
                "SELECT setval(pg_get_serial_sequence(%s, 'id'), max(id)) FROM "
                + _TABLES[table]
                + " HAVING count(*) > 0",
                (table,),
            )
        return int(counter[0]) if counter else 0

    def _stale(self, sealed: SealedColumn) -> tuple[LiteralString, tuple[Any, ...]]:
        side = self.SEALED_SIDE.get(sealed.name)
        column = sealed.column
        prefix = self.codec.current_prefix
        if prefix is not None:
            if side is None:
                return f"substring({column} FROM 1 FOR 8) <> %s", (prefix,)
            return f"({column} IS NOT NULL OR substring({side} FROM 1 FOR 8) <> %s)", (prefix,)
        if side is None:
            return f"substring({column} FROM 1 FOR 4) = %s", (SEALED_MAGIC,)
        return f"{side} IS NOT NULL", ()

    async def _forget_old_keys(self) -> bool:
        async def work(tx: Tx) -> bool:
            # A concurrent write that seals (it records its key id) waits for, or is seen by, the check.
            await tx.execute("LOCK TABLE encryption_keys IN EXCLUSIVE MODE")
            return await self._forget_old_keys_in(tx)

        return await self._transaction(work, writing=True)

    # -- encryption at rest (docs/security.md "Encryption at rest") -----------------------------

    async def _check_keys(self, conn: _Connection) -> None:
        """Refuse a database whose records are under a key the codec cannot open (reads only)."""
        async with AsyncClientCursor(conn) as cur:
            await self._begin(cur)
            used = await self._sealing_key_ids(outside_pool(cur))
        await conn.rollback()
        self.codec.check_keys(used, str(self.location), "Nothing was modified.")

    async def _sealing_key_ids(self, tx: Tx) -> list[str]:
        exists = await tx.fetchone("SELECT to_regclass('encryption_keys') IS NOT NULL")
        if exists is None or not exists[0]:
            return []
        return await self._key_ids(tx)

    # -- reads whose SQL is PostgreSQL's ------------------------------------------------------

    async def context_counts(self, context_ids: list[ContextId]) -> dict[ContextId, tuple[int, int, int]]:
        """Per context: (state updates after registration, events handled, open dead letters)."""

        async def work(tx: Tx) -> list[TupleRow]:
            return await tx.fetchall(
                "SELECT i.id,"
                # Revisions are consecutive from the registration on, so the count survives pruning.
                " COALESCE((SELECT x.revision - r.revision FROM contexts x JOIN changes r ON r.context_id = x.id"
                "  WHERE x.id = i.id AND r.op = 'register' ORDER BY r.sequence DESC LIMIT 1), 0),"
                " (SELECT count(*) FROM events e WHERE e.context_id = i.id),"
                " (SELECT count(*) FROM dead_letters d WHERE d.context_id = i.id AND d.replayed_at IS NULL)"
                " FROM unnest(%s::uuid[]) WITH ORDINALITY AS i(id, n) ORDER BY i.n",
                (context_ids,),
            )

        if not context_ids:
            return {}
        return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in await self._run(work, writing=False)}

    async def poll_changes(self, sequence: int, *, limit: int, force: bool) -> list[Change]:
        # An index range probe on the changes primary key is as cheap as any "anything new?"
        # check would be, so ``force`` changes nothing here; announcements say when to call.
        return await self.changes_after(sequence, limit=limit)

    async def changes_after(self, sequence: int, *, limit: int) -> list[Change]:
        """Changes after ``sequence`` up to the feed's visibility horizon (store/pg_feed.py)."""
        ready, held_back = await self._horizon.read(
            sequence, lambda: super(PostgresStore, self).changes_after(sequence, limit=limit)
        )
        # Held back by a write in flight: its own NOTIFY must wake the feed even when it is ours.
        self._changes.held_back = held_back
        return ready

    async def last_sequence(self) -> int:
        """The last committed change such that every change before it is committed too."""
        last = await self._horizon.settle()

        async def work(tx: Tx) -> int:
            if last > 0:
                row = await tx.fetchone("SELECT coalesce(max(sequence), 0) FROM changes WHERE sequence <= %s", (last,))
            elif (await tx.fetchone("SELECT to_regclass('store_counter') IS NOT NULL") or (False,))[0]:
                # Before schema 6 (`audit verify` or `db status` of a database not migrated yet).
                row = await tx.fetchone("SELECT value FROM store_counter WHERE name = 'sequence'")
            else:
                return 0
            return int(row[0]) if row else 0

        return await self._transaction(work, writing=False)

    async def status(self) -> StoreStatus:
        async def work(tx: Tx) -> StoreStatus:
            version = await self._schema_version(tx)
            contexts = last = 0
            size: int | None = None
            if version > 0:
                row = await tx.fetchone(
                    "SELECT (SELECT count(*) FROM contexts WHERE deleted_at IS NULL),"
                    " (SELECT max(sequence) FROM changes)"
                )
                if row is not None:
                    contexts, last = int(row[0]), int(row[1] or 0)
                total = await tx.fetchone(
                    "SELECT sum(pg_total_relation_size(to_regclass(t)))::bigint FROM unnest(%s::text[]) AS t",
                    (
                        [
                            "contexts",
                            "name_revisions",
                            "history",
                            "changes",
                            "events",
                            "dead_letters",
                            "change_sequence",
                            "encryption_keys",
                            "audit_log",
                            "audit_heads",
                            "audit_legacy",
                            "audit_sequence",
                            "schema_migrations",
                        ],
                    ),
                )
                size = int(total[0]) if total and total[0] is not None else None
            key_ids = await self._sealing_key_ids(tx) if version > 0 else []
            info = await tx.fetchone("SELECT current_schema(), current_setting('server_version')")
            return StoreStatus(
                backend=self.backend,
                location=self.location,
                schema_version=version,
                latest_schema_version=LATEST_SCHEMA_VERSION,
                pending_migrations=[m.version for m in MIGRATIONS if m.version > version],
                contexts=contexts,
                last_sequence=last,
                size_bytes=size,
                extra={
                    "schema": info[0] if info else None,
                    "server_version": info[1] if info else None,
                    # Encryption at rest: the ids of the keys values are sealed with (empty: plaintext).
                    "encryption_key_ids": key_ids,
                },
            )

        return await self._run(work, writing=False)

    async def backup(self, destination: Path, *, force: bool = False) -> None:
        """A consistent export (one snapshot) as JSON lines; restore it with ``groundhog-mcp import``.

        A physical copy of a PostgreSQL database is ``pg_dump``'s job, not ours. With encryption
        at rest on, the export would be the decrypted contents: refused (``export --plaintext``
        says so explicitly; ``pg_dump`` copies the sealed values).
        """
        if self.codec.configured:
            raise StateUpdateError(
                "backup: on PostgreSQL a backup is a JSON export, which with encryption at rest on would hold the "
                "decrypted contents; use pg_dump (it copies the encrypted values), or `export --plaintext` to "
                "write them decrypted on purpose. Nothing was written."
            )
        output = PrivateOutput(destination, force=force, what="backup")
        aside = await asyncio.to_thread(output.start)
        try:
            out = await asyncio.to_thread(aside.open, "w", encoding="utf-8")
            try:
                buffer: list[str] = []
                async for record in self.export_records():
                    buffer.append(dumps(record) + "\n")
                    if len(buffer) >= _EXPORT_PAGE:
                        await asyncio.to_thread(out.writelines, buffer)
                        buffer = []
                await asyncio.to_thread(out.writelines, buffer)
            finally:
                await asyncio.to_thread(out.close)
            await asyncio.to_thread(output.commit)
        except BaseException:
            await asyncio.to_thread(output.discard)
            raise

    # -- announcements (LISTEN / NOTIFY, see ChangeListener) -----------------------------------

    @property
    def announcing(self) -> bool:
        """True while the LISTEN session is up (see :class:`~groundhog_mcp.store.base.ChangeAnnouncer`)."""
        return self._changes.listening

    async def wait_for_changes(self, seen: int) -> int:
        return await self._changes.wait_for_changes(seen)

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        conn = await self._connect()
        try:
            encoding = await _scalar(conn, "SHOW server_encoding")
            if str(encoding).upper() not in ("UTF8", "UTF-8"):
                raise InitializationError(
                    f"database: {self.location} uses server encoding {encoding}; groundhog-mcp needs a UTF8 database"
                )
            version = await self._probe(conn)
            await conn.commit()
            if version > LATEST_SCHEMA_VERSION:
                raise newer_schema(self.location, version)
            if self.auto_migrate:
                await self._check_keys(conn)  # read-only: a wrong key leaves the database as it was
            if self.auto_migrate and version < LATEST_SCHEMA_VERSION:
                await self._migrate_on(conn)
        except psycopg.Error as exc:
            raise InitializationError(
                f"database: cannot open {self.location}: {first_line(exc)}; nothing was modified"
            ) from exc
        finally:
            await conn.close()
        pool: AsyncConnectionPool[_Connection] = AsyncConnectionPool(
            self._conninfo,
            min_size=self.pool_min_size,
            max_size=self.pool_max_size,
            # Autocommit: PgBatchTx sends BEGIN and COMMIT with the statements (one round trip).
            kwargs={"prepare_threshold": None, "autocommit": True},
            configure=_configure,
            open=False,
            timeout=self.pool_timeout_s,
            name="groundhog-mcp",
        )
        try:
            await pool.open(wait=True, timeout=self.pool_timeout_s)
        except PoolTimeout as exc:
            await pool.close()
            raise InitializationError(
                f"database: cannot fill the connection pool for {self.location} within {self.pool_timeout_s:g} s"
            ) from exc
        self._pool = pool
        tried = asyncio.Event()
        self._listener = asyncio.create_task(self._changes.listen(tried), name="groundhog-postgres-listen")
        # Let the first LISTEN happen before the feed starts, so announcements flow from the
        # start. A failure is logged and retried by the listener, not raised: the feed polls.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.connect_timeout_s + 1):
                await tried.wait()

    async def _probe(self, conn: _Connection) -> int:
        """The recorded schema version (0 for an empty schema); reads only."""
        async with AsyncClientCursor(conn) as cur:
            await self._begin(cur)
            return await self._schema_version(outside_pool(cur))

    async def _schema_version(self, tx: Tx) -> int:
        row = await tx.fetchone("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if row is None or not row[0]:
            return 0
        row = await tx.fetchone("SELECT coalesce(max(version), 0) FROM schema_migrations")
        return int(row[0]) if row else 0

    async def _migrate_on(self, conn: _Connection) -> list[int]:
        """Apply pending migrations in one transaction, under an advisory lock per schema."""
        applied: list[int] = []
        async with AsyncClientCursor(conn) as cur:
            # A first start may wait for another instance's migration: allow it the statement timeout.
            await self._begin(cur, lock_timeout_ms=self.statement_timeout_ms)
            await cur.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(coalesce(%s, current_schema(), '')))",
                (_MIGRATION_LOCK_CLASS, self.pg_schema),
            )
            if self.pg_schema is not None:
                await cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.pg_schema,))
                if await cur.fetchone() is None:
                    await cur.execute(f'CREATE SCHEMA "{literal_identifier(self.pg_schema)}"')
            # Re-read under the lock: another instance may have won.
            current = await self._schema_version(outside_pool(cur))
            if current > LATEST_SCHEMA_VERSION:
                await conn.rollback()
                raise newer_schema(self.location, current)
            await cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
            )
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                await cur.execute(migration.postgres)
                await cur.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, utcnow()),
                )
                applied.append(migration.version)
        await conn.commit()
        return applied

    async def migrate(self) -> list[int]:
        conn = await self._connect()
        try:
            return await self._migrate_on(conn)
        except psycopg.Error as exc:
            raise InitializationError(
                f"database: migrating {self.location} failed: {first_line(exc)}; nothing was modified"
            ) from exc
        finally:
            await conn.close()

    async def close(self) -> None:
        if self._pool is None:
            return
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        pool, self._pool = self._pool, None
        await pool.close()


async def _scalar(conn: _Connection, query: LiteralString) -> Any:
    async with conn.cursor() as cur:
        await cur.execute(query)
        row = await cur.fetchone()
    return row[0] if row else None
