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

A write is one transaction: ``SELECT … FOR UPDATE`` on the live context row (a register
locks the name's ``name_revisions`` row instead), check ``expected_revision``, run the
mutator in a thread, write the state, take the store ``sequence`` from the
``store_counter`` row, write the change and the history snapshot, commit. The counter row
is the last lock a write takes and it is held to commit, so sequences are gap-free, never
reused, and committed in order: a reader that sees ``sequence`` n has seen every change
before it.

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
import dataclasses
import functools
import random
import re
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, LiteralString, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import structlog
from psycopg import AsyncConnection, AsyncCursor, errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg.types.string import TextLoader
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from groundhog_mcp.errors import (
    ConflictError,
    ContextError,
    EncryptionKeyError,
    InitializationError,
    NotFoundError,
    RecordIntegrityError,
    StateUpdateError,
    StoreBusyError,
)
from groundhog_mcp.models import (
    Change,
    ContextId,
    ContextState,
    HistoryEntry,
    JSONObject,
    dumps,
    json_diff,
    utcnow,
)
from groundhog_mcp.store.base import (
    SEALED_MAGIC,
    AuditEntry,
    AuditNote,
    AuditQuery,
    AuditRecord,
    AuditSigner,
    DeadLetter,
    EventAlreadyHandled,
    EventRecord,
    Mutation,
    Mutator,
    NewContext,
    RecordCipher,
    Retention,
    StoredContext,
    StoredEvent,
    StoredRevision,
    StoreStatus,
    feed_patch,
    key_mismatch,
    record_aad,
    registered,
    sealed_key_id,
)
from groundhog_mcp.store.migrations import LATEST_SCHEMA_VERSION, MIGRATIONS
from groundhog_mcp.store.records import (
    EXPORT_KINDS,
    RecordKind,
    export_page,
    header_record,
    import_entries,
    import_rows,
)
from groundhog_mcp.store.rows import (
    AUDIT_COLUMNS,
    CONTEXT_COLUMNS,
    DEAD_LETTER_COLUMNS,
    decode_audit,
    decode_change,
    decode_context,
    decode_dead_letter,
    decode_event,
    decode_history,
    decode_state,
)
from groundhog_mcp.store.sqlite import RotationProgress

__all__ = ["CHANGES_CHANNEL", "PostgresStore"]

log = structlog.get_logger("groundhog_mcp.store.postgres")

_T = TypeVar("_T")
_Cursor = AsyncCursor[TupleRow]
_Connection = AsyncConnection[TupleRow]

# Reads add the sealed state (encryption at rest): NULL on a plaintext row, then ``state`` holds it.
_CONTEXT_SELECT: Final = CONTEXT_COLUMNS + ", state_sealed"
_LIVE_ROW: Final = f"SELECT {_CONTEXT_SELECT} FROM contexts WHERE namespace = %s AND name = %s AND deleted_at IS NULL"
_DEAD_LETTER_SELECT: Final = DEAD_LETTER_COLUMNS + ", payload_sealed, last_error_sealed"
# A change's rows in one statement: the sequence from the counter row, the change, the history
# snapshot (when given), the event record (when given), and the NOTIFY, delivered on commit.
_RECORD: Final = (
    "WITH counter AS (UPDATE store_counter SET value = value + 1 WHERE name = 'sequence' RETURNING value),"
    " change AS (INSERT INTO changes (sequence, context_id, namespace, name, revision, op, actor, timestamp, patch,"
    "  patch_sealed)"
    "  SELECT value, %(id)s::uuid, %(namespace)s::text, %(name)s::text, %(revision)s::bigint, %(op)s::text,"
    "  %(actor)s::text, %(now)s::timestamptz, %(patch)s::json, %(patch_sealed)s::bytea FROM counter),"
    " snapshot AS (INSERT INTO history (context_id, revision, sequence, op, actor, timestamp, size, snapshot)"
    "  SELECT %(id)s::uuid, %(revision)s::bigint, value, %(op)s::text, %(actor)s::text, %(now)s::timestamptz,"
    "  %(size)s::integer, %(snapshot)s::bytea FROM counter WHERE %(snapshot)s::bytea IS NOT NULL),"
    " event AS (INSERT INTO events (context_id, type, payload, idempotency_key, revision, sequence, created_at,"
    "  payload_sealed)"
    "  SELECT %(id)s::uuid, %(event_type)s::text, %(payload)s::text, %(key)s::text, %(revision)s::bigint, value,"
    "  %(now)s::timestamptz, %(payload_sealed)s::bytea FROM counter WHERE %(event_type)s::text IS NOT NULL),"
    # Encryption at rest: the id of the key this write sealed with (no round trip of its own).
    " sealing AS (INSERT INTO encryption_keys (key_id, first_used) SELECT %(key_id)s::text, %(now)s::timestamptz"
    "  WHERE %(key_id)s::text IS NOT NULL ON CONFLICT (key_id) DO NOTHING),"
    # The audit chain head, locked after the counter row and held to commit (when audit is on).
    " head AS (UPDATE audit_head SET sequence = sequence + 1 WHERE id = 1 AND %(audit)s::boolean"
    "  RETURNING sequence, hmac)"
    " SELECT value, pg_notify(%(channel)s::text, value::text), head.sequence, head.hmac FROM counter"
    " LEFT JOIN head ON true"
)
# The row, and the head's new HMAC, in one statement (the head's row lock is already held).
_AUDIT_APPEND: Final = (
    "WITH head AS (UPDATE audit_head SET hmac = %s WHERE id = 1)"
    f" INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
)
_AUDIT_LOCK_HEAD: Final = "UPDATE audit_head SET sequence = sequence + 1 WHERE id = 1 RETURNING sequence, hmac"
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# The advisory-lock namespace of groundhog-mcp ("ghmc"); the second key is the schema.
_MIGRATION_LOCK_CLASS = 0x67686D63
# States larger than this are parsed, serialised and compressed off the event loop.
_OFFLOAD_BYTES = 64 * 1024
_EXPORT_PAGE = 500
# A transaction whose connection turned out dead before commit is run this many times at most.
_ATTEMPTS = 3
# Every write announces its sequence here; every instance listens (see the module docstring).
CHANGES_CHANNEL: Final = "groundhog_changes"
# The LISTEN session: reconnect after 0.1 s, doubling up to 10 s (with jitter); and check a
# quiet session every 30 s, so a silently dropped one is noticed before TCP keepalives would.
_LISTEN_RETRY_MIN_S = 0.1
_LISTEN_RETRY_MAX_S = 10.0
_LISTEN_CHECK_S = 30.0
_MAX_OWN_SEQUENCES = 4096
# Our URL parameters, taken out before the rest goes to libpq.
_OUR_PARAMETERS = ("schema", "listen_url", "pool_min_size", "pool_max_size")


@dataclasses.dataclass(frozen=True)
class _SealedColumn:
    """A column that holds state contents, sealed when a key is configured: ``plain`` holds the
    plaintext (json/text) and ``sealed`` (bytea) the sealed value, one of them NULL; history
    snapshots are bytea already and hold either in place (``sealed == plain``)."""

    table: LiteralString
    column: LiteralString
    plain: LiteralString
    sealed: LiteralString
    key: tuple[LiteralString, ...]  # the primary key: rotate-key pages follow it
    namespace: LiteralString | None  # the namespace column; None: looked up by context id
    context: LiteralString  # the context id column
    number: LiteralString  # the revision column (dead letters: their id)

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"

    @property
    def in_place(self) -> bool:
        return self.sealed == self.plain


# The same logical columns (and associated data) as the SQLite store's.
_SEALED_COLUMNS: Final[tuple[_SealedColumn, ...]] = (
    _SealedColumn("contexts", "state", "state", "state_sealed", ("id",), "namespace", "id", "revision"),
    _SealedColumn(
        "history", "snapshot", "snapshot", "snapshot", ("context_id", "revision"), None, "context_id", "revision"
    ),
    _SealedColumn("changes", "patch", "patch", "patch_sealed", ("sequence",), "namespace", "context_id", "revision"),
    _SealedColumn("events", "payload", "payload", "payload_sealed", ("id",), None, "context_id", "revision"),
    _SealedColumn("dead_letters", "payload", "payload", "payload_sealed", ("id",), "namespace", "context_id", "id"),
    _SealedColumn(
        "dead_letters", "last_error", "last_error", "last_error_sealed", ("id",), "namespace", "context_id", "id"
    ),
)


def _sealed_of(table: str) -> list[_SealedColumn]:
    return [c for c in _SEALED_COLUMNS if c.table == table]


def _export_extras(kind: RecordKind) -> list[LiteralString]:
    """The sealed columns an export reads after the record's own."""
    return [c.sealed for c in _sealed_of(kind.table) if not c.in_place]


def _export_select(kind: RecordKind, after: bool) -> LiteralString:
    """``kind.select_page`` plus the sealed columns of its table."""
    extras = "".join(", " + c for c in _export_extras(kind))
    where: LiteralString = f" WHERE ({kind.order_by}) > ({', '.join('%s' for _ in kind.key)})" if after else ""
    return f"SELECT {kind.select_list}{extras} FROM {kind.table}{where} ORDER BY {kind.order_by} LIMIT %s"


def _compress(text: str) -> bytes:
    return zlib.compress(text.encode("utf-8"), 6)


def _decompress(blob: bytes) -> str:
    return zlib.decompress(blob).decode("utf-8")


def _decode_context(row: TupleRow) -> StoredContext:
    return decode_context(row, row[9])


def _decode_contexts(rows: list[TupleRow]) -> list[StoredContext]:
    return [decode_context(r, r[9]) for r in rows]


def _encode_state(state: ContextState) -> tuple[str, bytes]:
    """The exact JSON text stored for a state, and its compressed history snapshot."""
    text = dumps(state.to_json())
    return text, _compress(text)


def _apply(row: TupleRow, mutator: Mutator) -> tuple[StoredContext, Mutation, str, bytes]:
    """Decode, mutate, serialise, compress: the CPU part of a write, run in one thread hop."""
    current = _decode_context(row)
    mutation = mutator(current)
    text, snapshot = _encode_state(mutation.state)
    return current, mutation, text, snapshot


def _revision_state(snapshot: bytes) -> ContextState:
    return decode_state(_decompress(snapshot))


def _missed_patch(row: TupleRow, snapshot: bytes) -> list[JSONObject]:
    """What happened between the snapshot the caller expected and the current state."""
    return json_diff(_revision_state(snapshot).document(), _decode_context(row).state.document())


async def _off_loop(size: int, fn: Callable[..., _T], *args: Any) -> _T:
    """Run ``fn`` in a thread when it handles a large state, inline otherwise (a hop costs more)."""
    if size > _OFFLOAD_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


async def _configure(conn: _Connection) -> None:
    # json columns arrive as their exact text: we choose where (and whether) to parse them.
    conn.adapters.register_loader("json", TextLoader)


class PostgresStore:
    """Several groundhog-mcp instances on one PostgreSQL database (extra ``[postgres]``).

    ``busy_timeout_ms`` bounds a wait for a row lock (``lock_timeout``), like SQLite's busy
    timeout; ``statement_timeout_ms`` bounds any statement; ``connect_timeout_s`` bounds a
    new connection and a wait for a pooled one is bounded by ``pool_timeout_s``.
    """

    backend = "postgres"

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
        self.retention = retention or Retention()
        self.audit_signer = audit_signer
        self.cipher = cipher
        self._namespaces: dict[str, str] = {}  # context id -> namespace (never changes): history/event AAD
        try:
            libpq_url, ours = _split_parameters(url)
            params = conninfo_to_dict(libpq_url)
            listen_libpq_url = _split_parameters(listen_url or ours.get("listen_url") or libpq_url)[0]
            listen_params = conninfo_to_dict(listen_libpq_url)
        except (psycopg.ProgrammingError, ValueError) as exc:
            raise InitializationError(
                f"database: not a usable PostgreSQL connection string ({_first_line(exc)})"
            ) from exc
        schema = pg_schema if pg_schema is not None else ours.get("schema")
        pool_max_size = pool_max_size or _pool_size(ours, "pool_max_size", 4)
        pool_min_size = pool_min_size or _pool_size(ours, "pool_min_size", 1)
        if not 1 <= pool_min_size <= pool_max_size:
            raise InitializationError(
                f"database: pool_min_size={pool_min_size} must be between 1 and pool_max_size={pool_max_size}"
            )
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
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
        self.location = _location(params, schema)
        self.listen_location = _location(listen_params, None)
        self.busy_timeout_ms = busy_timeout_ms
        self.statement_timeout_ms = statement_timeout_ms
        self.connect_timeout_s = max(2, int(connect_timeout_s))
        self.pool_min_size = pool_min_size
        self.pool_max_size = pool_max_size
        self.pool_timeout_s = pool_timeout_s
        self.auto_migrate = auto_migrate
        self._pool: AsyncConnectionPool[_Connection] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listening = False
        self._announcements = 0
        self._announced = asyncio.Event()
        # Sequences this store committed: their NOTIFY comes back to us, but the change feed was
        # woken by the write itself, so it is not announced again.
        self._own_sequences: set[int] = set()

    # -- plumbing ---------------------------------------------------------------------------

    def _preamble(self, *, lock_timeout_ms: int, idle_timeout_ms: int) -> tuple[LiteralString, list[str]]:
        """The first statement of every transaction: transaction-local settings only."""
        query: LiteralString = (
            "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true),"
            " set_config('idle_in_transaction_session_timeout', %s, true)"
        )
        params = [str(self.statement_timeout_ms), str(lock_timeout_ms), str(idle_timeout_ms)]
        if self.pg_schema is not None:
            query += ", set_config('search_path', %s, true)"
            params.append(f'"{self.pg_schema}"')
        return query, params

    async def _begin(
        self, cur: _Cursor, *, lock_timeout_ms: int | None = None, idle_timeout_ms: int | None = None
    ) -> None:
        query, params = self._preamble(
            lock_timeout_ms=self.busy_timeout_ms if lock_timeout_ms is None else lock_timeout_ms,
            idle_timeout_ms=self.statement_timeout_ms if idle_timeout_ms is None else idle_timeout_ms,
        )
        await cur.execute(query, params)

    async def _connect(self) -> _Connection:
        """A connection outside the pool (open, migrate): its failure says exactly what is wrong."""
        try:
            conn = await psycopg.AsyncConnection.connect(self._conninfo, prepare_threshold=None, autocommit=False)
        except psycopg.Error as exc:
            raise InitializationError(
                f"database: cannot connect to PostgreSQL at {self.location}: {_first_line(exc)}"
            ) from exc
        await _configure(conn)
        return conn

    async def _run(self, work: Callable[[_Cursor], Awaitable[_T]], *, writing: bool) -> _T:
        """Run ``work`` in one transaction on a pooled connection and commit.

        A connection found dead before commit (server restart, ``pg_terminate_backend``,
        network) is replaced and the transaction run again (at most twice): nothing of it was
        committed, and a mutator is pure, so that is safe.
        """
        if self._pool is None:
            raise InitializationError("database: the store is not open")
        pool = self._pool
        requested = _cancel_requests()
        for attempt in range(1, _ATTEMPTS + 1):
            committing = False
            conn: _Connection | None = None
            try:
                async with pool.connection() as conn:
                    _deliver_swallowed_cancel(requested)
                    async with conn.cursor() as cur:
                        await self._begin(cur)
                        result = await work(cur)
                    committing = True
                    await conn.commit()
                    return result
            except PoolClosed as exc:
                raise InitializationError("database: the store is not open (it was closed)") from exc
            except PoolTimeout as exc:
                raise StoreBusyError(
                    f"database: no connection to PostgreSQL at {self.location} within "
                    f"pool_timeout={self.pool_timeout_s:g} s (server unreachable, or all {self.pool_max_size} "
                    f"pooled connections busy); {_nothing(writing)}, retry the call"
                ) from exc
            except psycopg.OperationalError as exc:
                lost = conn is not None and (conn.broken or conn.closed)
                if lost and committing and writing:
                    raise StateUpdateError(
                        f"database: the connection to PostgreSQL at {self.location} was lost while committing "
                        f"({_first_line(exc)}); the write may or may not have been applied: re-read the "
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
        nothing = _nothing(writing)
        if isinstance(exc, errors.LockNotAvailable):
            return StoreBusyError(
                f"database: locked by another writer for more than busy_timeout={self.busy_timeout_ms} ms; "
                f"{nothing}, retry the call"
            )
        if isinstance(exc, errors.QueryCanceled):
            return StoreBusyError(
                f"database: a statement ran longer than statement_timeout={self.statement_timeout_ms} ms; "
                f"{nothing}, retry the call"
            )
        if isinstance(exc, errors.SerializationFailure | errors.DeadlockDetected):
            return StoreBusyError(f"database: {_first_line(exc)}; {nothing}, retry the call")
        if isinstance(exc, errors.UndefinedTable):
            return InitializationError(
                f"database: the groundhog-mcp tables are missing at {self.location} (schema not migrated); "
                "run `groundhog-mcp db migrate`"
            )
        if isinstance(exc, errors.DiskFull):
            return StateUpdateError(
                f"database: disk full on the PostgreSQL server at {self.location}; {nothing}, the previous "
                "state is intact; free space and retry"
            )
        if isinstance(exc, errors.ReadOnlySqlTransaction):
            return StateUpdateError(
                f"database: PostgreSQL at {self.location} is read-only (a standby?); {nothing}; connect to the primary"
            )
        if isinstance(exc, psycopg.OperationalError):
            return StoreBusyError(
                f"database: PostgreSQL at {self.location} is unavailable ({_first_line(exc)}); {nothing}, "
                "retry the call"
            )
        return StateUpdateError(f"database: {_first_line(exc)}; {nothing}")

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
                raise _newer_schema(self.location, version)
            if self.auto_migrate:
                await self._check_keys(conn)  # read-only: a wrong key leaves the database as it was
            if self.auto_migrate and version < LATEST_SCHEMA_VERSION:
                await self._migrate_on(conn)
        except psycopg.Error as exc:
            raise InitializationError(
                f"database: cannot open {self.location}: {_first_line(exc)}; nothing was modified"
            ) from exc
        finally:
            await conn.close()
        pool: AsyncConnectionPool[_Connection] = AsyncConnectionPool(
            self._conninfo,
            min_size=self.pool_min_size,
            max_size=self.pool_max_size,
            kwargs={"prepare_threshold": None, "autocommit": False},
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
        self._listener = asyncio.create_task(self._listen(tried), name="groundhog-postgres-listen")
        # Let the first LISTEN happen before the feed starts, so announcements flow from the
        # start. A failure is logged and retried by the listener, not raised: the feed polls.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.connect_timeout_s + 1):
                await tried.wait()

    async def _probe(self, conn: _Connection) -> int:
        """The recorded schema version (0 for an empty schema); reads only."""
        async with conn.cursor() as cur:
            await self._begin(cur)
            return await self._schema_version(cur)

    async def _schema_version(self, cur: _Cursor) -> int:
        await cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        row = await cur.fetchone()
        if row is None or not row[0]:
            return 0
        await cur.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _migrate_on(self, conn: _Connection) -> list[int]:
        """Apply pending migrations in one transaction, under an advisory lock per schema."""
        applied: list[int] = []
        async with conn.cursor() as cur:
            # A first start may wait for another instance's migration: allow it the statement timeout.
            await self._begin(cur, lock_timeout_ms=self.statement_timeout_ms)
            await cur.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(coalesce(%s, current_schema(), '')))",
                (_MIGRATION_LOCK_CLASS, self.pg_schema),
            )
            if self.pg_schema is not None:
                await cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.pg_schema,))
                if await cur.fetchone() is None:
                    await cur.execute(f'CREATE SCHEMA "{_literal_identifier(self.pg_schema)}"')
            current = await self._schema_version(cur)  # re-read under the lock: another instance may have won
            if current > LATEST_SCHEMA_VERSION:
                await conn.rollback()
                raise _newer_schema(self.location, current)
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
                f"database: migrating {self.location} failed: {_first_line(exc)}; nothing was modified"
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

    # -- announcements (LISTEN / NOTIFY) ----------------------------------------------------

    @property
    def announcing(self) -> bool:
        """True while the LISTEN session is up (see :class:`~groundhog_mcp.store.base.ChangeAnnouncer`)."""
        return self._listening

    async def wait_for_changes(self, seen: int) -> int:
        while self._announcements <= seen:
            await self._announced.wait()
        return self._announcements

    def _announce(self) -> None:
        self._announcements += 1
        self._announced.set()
        self._announced = asyncio.Event()

    def _own(self, payload: str) -> bool:
        """Whether a notification is of our own write (its ``sequence`` is one we committed)."""
        try:
            sequence = int(payload)
        except ValueError:
            return False
        if sequence not in self._own_sequences:
            return False
        self._own_sequences.discard(sequence)
        return True

    async def _listen(self, tried: asyncio.Event) -> None:
        """Hold the LISTEN session for as long as the store is open, reconnecting with backoff;
        ``tried`` is set once the first attempt succeeded or failed."""
        delay = _LISTEN_RETRY_MIN_S
        lost = False
        while True:
            _deliver_swallowed_cancel(0)  # nothing else cancels this task: close() did
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._listen_conninfo, autocommit=True, prepare_threshold=None
                )
            except psycopg.Error as exc:
                log.warning(
                    "change notifications: cannot connect the LISTEN session; polling meanwhile",
                    location=self.listen_location,
                    error=_first_line(exc),
                    retry_in_s=round(delay, 2),
                )
                lost = True
            else:
                try:
                    await conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                    self._listening = True
                    delay = _LISTEN_RETRY_MIN_S
                    if lost:
                        log.info("change notifications: LISTEN session restored", location=self.listen_location)
                    # Commits made while no session listened were not announced: say "read now".
                    self._announce()
                    tried.set()
                    while True:
                        async for notice in conn.notifies(timeout=_LISTEN_CHECK_S):
                            if not self._own(notice.payload):
                                self._announce()
                        await conn.execute("SELECT 1")
                except psycopg.Error as exc:
                    log.warning(
                        "change notifications: LISTEN session lost; polling until it is back",
                        location=self.listen_location,
                        error=_first_line(exc),
                    )
                    lost = True
                except Exception:
                    log.exception("change notifications: LISTEN session failed unexpectedly; polling meanwhile")
                    lost = True
                finally:
                    self._listening = False
                    await conn.close()
            tried.set()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, _LISTEN_RETRY_MAX_S)

    # -- encryption at rest (docs: README "Encryption at rest") -----------------------------

    @property
    def _sealing(self) -> bool:
        return self.cipher is not None and self.cipher.key_id is not None

    @property
    def _sealing_key(self) -> str | None:
        return self.cipher.key_id if self.cipher is not None else None

    async def _check_keys(self, conn: _Connection) -> None:
        """Refuse a database whose records are under a key the cipher does not have (reads only)."""
        async with conn.cursor() as cur:
            await self._begin(cur)
            used = await self._sealing_key_ids(cur)
        await conn.rollback()
        key_mismatch(self.cipher, used, str(self.location), "Nothing was modified.")

    async def _sealing_key_ids(self, cur: _Cursor) -> list[str]:
        await cur.execute("SELECT to_regclass('encryption_keys') IS NOT NULL")
        exists = await cur.fetchone()
        if exists is None or not exists[0]:
            return []
        await cur.execute("SELECT key_id FROM encryption_keys ORDER BY first_used, key_id")
        return [str(r[0]) for r in await cur.fetchall()]

    async def _note_key(self, cur: _Cursor) -> None:
        """Record the sealing key's id, in the transaction that uses it (``_record`` does it itself)."""
        if self._sealing:
            await cur.execute(
                "INSERT INTO encryption_keys (key_id, first_used) VALUES (%s, %s) ON CONFLICT (key_id) DO NOTHING",
                (self._sealing_key, utcnow()),
            )

    def _seal(self, column: str, namespace: str, context_id: Any, number: int, plain: str | bytes) -> bytes:
        if self.cipher is None or self.cipher.key_id is None:
            raise EncryptionKeyError("encryption: no current key configured to seal records with")
        data = plain.encode("utf-8") if isinstance(plain, str) else plain
        return self.cipher.seal(data, record_aad(column, namespace, str(context_id), number))

    def _seal_pair(
        self, column: str, namespace: str, context_id: Any, number: int, text: str | None
    ) -> tuple[str | None, bytes | None]:
        """(plaintext column, sealed column) as stored: sealed under the current key, or plaintext."""
        if text is None or not self._sealing:
            return text, None
        return None, self._seal(column, namespace, context_id, number, text)

    def _open(self, column: str, namespace: str, context_id: Any, number: int, value: bytes) -> bytes:
        where = "dead letter" if column.startswith("dead_letters.") else "revision"
        if self.cipher is None:
            raise RecordIntegrityError(
                f"encryption: {column} of context {context_id} {where} {number} is encrypted and no key is configured"
            )
        try:
            return self.cipher.open(bytes(value), record_aad(column, namespace, str(context_id), number))
        except ValueError as exc:
            raise RecordIntegrityError(
                f"encryption: {column} of context {context_id} {where} {number} does not decrypt: {exc}; "
                "the record is left as it is"
            ) from None

    def _open_text(self, column: str, namespace: str, context_id: Any, number: int, value: bytes) -> str:
        return self._open(column, namespace, context_id, number, value).decode("utf-8")

    def _open_snapshot(self, namespace: str, context_id: Any, revision: int, value: bytes) -> bytes:
        """A history snapshot as compressed plaintext (it is sealed in place: bytea either way)."""
        if sealed_key_id(bytes(value[:8])) is None:
            return value
        return self._open("history.snapshot", namespace, context_id, revision, value)

    def _context_row(self, row: TupleRow) -> TupleRow:
        """A row read with ``_CONTEXT_SELECT`` as ``CONTEXT_COLUMNS`` with the state in plaintext."""
        sealed = row[13]
        if sealed is None:
            return row[:13]
        return (*row[:9], self._open_text("contexts.state", row[1], row[0], int(row[8]), sealed), *row[10:13])

    def _change_row(self, row: TupleRow) -> TupleRow:
        """A change row read with ``patch, patch_sealed``: the patch in plaintext."""
        sealed = row[9]
        if sealed is None:
            return row[:9]
        return (*row[:8], self._open_text("changes.patch", row[2], row[1], int(row[4]), sealed))

    def _dead_letter(self, row: TupleRow) -> DeadLetter:
        payload, error = row[5], row[8]
        if row[12] is not None:
            payload = self._open_text("dead_letters.payload", row[1], row[2], int(row[0]), row[12])
        if row[13] is not None:
            error = self._open_text("dead_letters.last_error", row[1], row[2], int(row[0]), row[13])
        return decode_dead_letter(row, payload, error)

    async def _namespace_of(self, cur: _Cursor, context_id: Any) -> str:
        key = str(context_id)
        namespace = self._namespaces.get(key)
        if namespace is None:
            await cur.execute("SELECT namespace FROM contexts WHERE id = %s", (context_id,))
            row = await cur.fetchone()
            if row is None:
                return ""
            namespace = self._namespaces[key] = str(row[0])
        return namespace

    # -- writes -----------------------------------------------------------------------------

    async def register(
        self,
        new: NewContext,
        *,
        actor: str,
        if_exists: Literal["error", "return"],
        audit: AuditNote | None = None,
    ) -> tuple[StoredContext, Change | None]:
        async def work(cur: _Cursor) -> tuple[StoredContext, Change | None]:
            # The name's row in name_revisions is the lock that serialises registrations of one
            # name across instances (there is no live context row to lock yet).
            await cur.execute(
                "INSERT INTO name_revisions (namespace, name, last_revision) VALUES (%s, %s, 0)"
                " ON CONFLICT (namespace, name) DO NOTHING",
                (new.namespace, new.name),
            )
            await cur.execute(
                "SELECT last_revision FROM name_revisions WHERE namespace = %s AND name = %s FOR UPDATE",
                (new.namespace, new.name),
            )
            last = await cur.fetchone()
            await cur.execute(_LIVE_ROW, (new.namespace, new.name))
            existing = await cur.fetchone()
            if existing is not None:
                if if_exists == "return":
                    existing = self._context_row(existing)
                    return await _off_loop(len(existing[9]), _decode_context, existing), None
                raise ConflictError.already_exists(new.name, existing[8])
            revision = (last[0] if last else 0) + 1
            text, snapshot = await asyncio.to_thread(_encode_state, new.state)
            size = len(text.encode("utf-8"))
            now = utcnow()
            state, state_sealed = self._seal_pair("contexts.state", new.namespace, new.id, revision, text)
            await cur.execute(
                f"INSERT INTO contexts ({CONTEXT_COLUMNS}, state_sealed)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (
                    new.id,
                    new.namespace,
                    new.name,
                    new.version,
                    dumps(new.metadata),
                    dumps(new.settings),
                    dumps(new.schema) if new.schema is not None else None,
                    dumps(new.handlers),
                    revision,
                    state,
                    size,
                    now,
                    now,
                    state_sealed,
                ),
            )
            stored = registered(new, revision=revision, state_size=size, now=now)
            change = await self._record(
                cur,
                stored.id,
                new.namespace,
                new.name,
                revision,
                "register",
                actor,
                now,
                snapshot=(snapshot, size),
                audit=audit,
            )
            return stored, change

        return await self._run(work, writing=True)

    async def mutate(
        self,
        namespace: str,
        name: str,
        expected_revision: int | None,
        mutator: Mutator,
        *,
        actor: str,
        event: EventRecord | None = None,
        audit: AuditNote | None = None,
    ) -> tuple[StoredContext, Change]:
        async def work(cur: _Cursor) -> tuple[StoredContext, Change]:
            row = await self._lock_live_row(cur, namespace, name)
            if event is not None and event.idempotency_key is not None:
                # Under the context's row lock: a second instance handling the same event waits, then sees it.
                seen = await self._find_event(cur, row[0], event.idempotency_key)
                if seen is not None:
                    raise EventAlreadyHandled(seen)
            await self._check_expected(cur, row, expected_revision)
            # The mutator runs off the event loop, as the protocol promises (it may be slow).
            current, mutation, text, snapshot = await asyncio.to_thread(_apply, row, mutator)
            size = len(text.encode("utf-8"))
            now = utcnow()
            revision = current.revision + 1
            state, state_sealed = self._seal_pair("contexts.state", namespace, current.id, revision, text)
            await cur.execute(
                "UPDATE contexts SET revision = %s, state = %s, state_sealed = %s, state_size = %s, updated_at = %s"
                " WHERE id = %s",
                (revision, state, state_sealed, size, now, current.id),
            )
            stored = dataclasses.replace(
                current, revision=revision, state=mutation.state, state_size=size, updated_at=now
            )
            change = await self._record(
                cur,
                current.id,
                namespace,
                current.name,
                revision,
                mutation.op,
                actor,
                now,
                mutation.patch,
                snapshot=(snapshot, size),
                event=event,
                settings=current.settings,
                audit=audit,
            )
            return stored, change

        return await self._run(work, writing=True)

    # -- events and dead letters ------------------------------------------------------------

    async def _find_event(self, cur: _Cursor, context_id: ContextId, key: str) -> StoredEvent | None:
        await cur.execute(
            "SELECT id, type, revision, sequence, created_at FROM events"
            " WHERE context_id = %s AND idempotency_key = %s",
            (context_id, key),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        return decode_event(row, context_id, key)

    async def find_event(self, context_id: ContextId, idempotency_key: str) -> StoredEvent | None:
        async def work(cur: _Cursor) -> StoredEvent | None:
            return await self._find_event(cur, context_id, idempotency_key)

        return await self._run(work, writing=False)

    async def add_dead_letter(
        self, letter: DeadLetter, *, actor: str = "local", audit: AuditNote | None = None
    ) -> DeadLetter:
        async def work(cur: _Cursor) -> DeadLetter:
            if letter.id:
                error, error_sealed = self._seal_pair(
                    "dead_letters.last_error", letter.namespace, letter.context_id, letter.id, letter.last_error
                )
                await self._note_key(cur)
                await cur.execute(
                    "UPDATE dead_letters SET attempts = attempts + %s, last_error = %s, last_error_sealed = %s"
                    " WHERE id = %s",
                    (letter.attempts, error, error_sealed, letter.id),
                )
                await self._append_audit(cur, AuditEntry.of_dead_letter(letter, actor, audit))
                return letter
            if self._sealing:
                stored = await self._add_sealed_dead_letter(cur, letter)
                await self._append_audit(cur, AuditEntry.of_dead_letter(stored, actor, audit))
                return stored
            await cur.execute(
                "INSERT INTO dead_letters (namespace, context_id, name, type, payload, idempotency_key, attempts,"
                " last_error, created_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING id",
                (
                    letter.namespace,
                    letter.context_id,
                    letter.name,
                    letter.type,
                    dumps(letter.payload),
                    letter.idempotency_key,
                    letter.attempts,
                    letter.last_error,
                    letter.created_at,
                ),
            )
            row = await cur.fetchone()
            stored = dataclasses.replace(letter, id=int(row[0]) if row else 0)
            await self._append_audit(cur, AuditEntry.of_dead_letter(stored, actor, audit))
            return stored

        return await self._run(work, writing=True)

    async def _add_sealed_dead_letter(self, cur: _Cursor, letter: DeadLetter) -> DeadLetter:
        # The associated data names the letter's id: taken from the sequence first.
        await cur.execute("SELECT nextval(pg_get_serial_sequence('dead_letters', 'id'))")
        row = await cur.fetchone()
        letter_id = int(row[0]) if row else 0
        await self._note_key(cur)
        await cur.execute(
            "INSERT INTO dead_letters (id, namespace, context_id, name, type, payload_sealed, idempotency_key,"
            " attempts, last_error_sealed, created_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (
                letter_id,
                letter.namespace,
                letter.context_id,
                letter.name,
                letter.type,
                self._seal(
                    "dead_letters.payload", letter.namespace, letter.context_id, letter_id, dumps(letter.payload)
                ),
                letter.idempotency_key,
                letter.attempts,
                self._seal(
                    "dead_letters.last_error", letter.namespace, letter.context_id, letter_id, letter.last_error
                ),
                letter.created_at,
            ),
        )
        return dataclasses.replace(letter, id=letter_id)

    async def list_dead_letters(
        self, namespace: str, *, name: str | None, after_id: int, limit: int, include_replayed: bool
    ) -> list[DeadLetter]:
        async def work(cur: _Cursor) -> list[TupleRow]:
            await cur.execute(
                f"SELECT {_DEAD_LETTER_SELECT} FROM dead_letters WHERE namespace = %s AND id > %s"
                " AND (%s::text IS NULL OR name = %s) AND (%s OR replayed_at IS NULL) ORDER BY id LIMIT %s",
                (namespace, after_id, name, name, include_replayed, limit),
            )
            return await cur.fetchall()

        return [self._dead_letter(r) for r in await self._run(work, writing=False)]

    async def get_dead_letter(self, namespace: str, letter_id: int) -> DeadLetter | None:
        async def work(cur: _Cursor) -> TupleRow | None:
            await cur.execute(
                f"SELECT {_DEAD_LETTER_SELECT} FROM dead_letters WHERE namespace = %s AND id = %s",
                (namespace, letter_id),
            )
            return await cur.fetchone()

        row = await self._run(work, writing=False)
        return self._dead_letter(row) if row is not None else None

    async def mark_replayed(self, letter_id: int, revision: int) -> None:
        async def work(cur: _Cursor) -> None:
            await cur.execute(
                "UPDATE dead_letters SET replayed_at = %s, replay_revision = %s WHERE id = %s",
                (utcnow(), revision, letter_id),
            )

        await self._run(work, writing=True)

    async def context_counts(self, context_ids: list[ContextId]) -> dict[ContextId, tuple[int, int, int]]:
        """Per context: (state updates after registration, events handled, open dead letters)."""

        async def work(cur: _Cursor) -> list[TupleRow]:
            await cur.execute(
                "SELECT i.id,"
                # Revisions are consecutive from the registration on, so the count survives pruning.
                " COALESCE((SELECT x.revision - r.revision FROM contexts x JOIN changes r ON r.context_id = x.id"
                "  WHERE x.id = i.id AND r.op = 'register' ORDER BY r.sequence DESC LIMIT 1), 0),"
                " (SELECT count(*) FROM events e WHERE e.context_id = i.id),"
                " (SELECT count(*) FROM dead_letters d WHERE d.context_id = i.id AND d.replayed_at IS NULL)"
                " FROM unnest(%s::uuid[]) WITH ORDINALITY AS i(id, n) ORDER BY i.n",
                (context_ids,),
            )
            return await cur.fetchall()

        if not context_ids:
            return {}
        return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in await self._run(work, writing=False)}

    async def unregister(
        self,
        namespace: str,
        name: str,
        expected_revision: int | None,
        *,
        purge: bool,
        actor: str,
        audit: AuditNote | None = None,
    ) -> Change:
        async def work(cur: _Cursor) -> Change:
            raw = await self._lock_live_row(cur, namespace, name, raw=True)
            row = self._context_row(raw)
            await self._check_expected(cur, row, expected_revision)
            context_id: ContextId = row[0]
            revision = int(row[8]) + 1
            now = utcnow()
            if purge:
                # Purge removes the content everywhere: snapshots, the diffs in the change feed, events.
                await cur.execute("DELETE FROM history WHERE context_id = %s", (context_id,))
                await cur.execute(
                    "UPDATE changes SET patch = NULL, patch_sealed = NULL WHERE context_id = %s", (context_id,)
                )
                await cur.execute("DELETE FROM events WHERE context_id = %s", (context_id,))
                await cur.execute("DELETE FROM dead_letters WHERE context_id = %s", (context_id,))
                await cur.execute("DELETE FROM contexts WHERE id = %s", (context_id,))
            elif self._sealing or raw[13] is not None:
                # The state's associated data names the revision: sealed again for the new one.
                state, state_sealed = self._seal_pair("contexts.state", namespace, context_id, revision, row[9])
                await cur.execute(
                    "UPDATE contexts SET deleted_at = %s, revision = %s, updated_at = %s, state = %s,"
                    " state_sealed = %s WHERE id = %s",
                    (now, revision, now, state, state_sealed, context_id),
                )
            else:
                await cur.execute(
                    "UPDATE contexts SET deleted_at = %s, revision = %s, updated_at = %s WHERE id = %s",
                    (now, revision, now, context_id),
                )
            return await self._record(
                cur, context_id, namespace, row[2], revision, "unregister", actor, now, audit=audit
            )

        return await self._run(work, writing=True)

    async def _lock_live_row(self, cur: _Cursor, namespace: str, name: str, *, raw: bool = False) -> TupleRow:
        """The live row, locked; its state in plaintext (``raw``: as read, with ``state_sealed``)."""
        await cur.execute(_LIVE_ROW + " FOR UPDATE", (namespace, name))
        row = await cur.fetchone()
        if row is None:
            raise NotFoundError(f"name: no context named {name!r}")
        return row if raw else self._context_row(row)

    async def _check_expected(self, cur: _Cursor, row: TupleRow, expected: int | None) -> None:
        current_revision = int(row[8])
        if expected is None or expected == current_revision:
            return
        missed: list[JSONObject] | None = None
        if 0 < expected < current_revision:
            await cur.execute(
                "SELECT snapshot FROM history WHERE context_id = %s AND revision = %s", (row[0], expected)
            )
            found = await cur.fetchone()
            if found is not None:
                snapshot = self._open_snapshot(row[1], row[0], expected, found[0])
                missed = await _off_loop(len(row[9]), _missed_patch, row, snapshot)
        raise ConflictError(row[2], expected, current_revision, missed)

    async def _record(
        self,
        cur: _Cursor,
        context_id: ContextId,
        namespace: str,
        name: str,
        revision: int,
        op: str,
        actor: str,
        now: datetime,
        patch: list[JSONObject] | None = None,
        *,
        snapshot: tuple[bytes, int] | None = None,
        event: EventRecord | None = None,
        settings: JSONObject | None = None,
        audit: AuditNote | None = None,
    ) -> Change:
        """The name's revision high-water mark; then, in one statement, the sequence, the change
        row, the history snapshot (``(compressed, size)``) and the event record, and the NOTIFY.

        The counter row is the last lock of the transaction and is held to commit (see the
        module docstring): one statement, then the commit, keeps that critical section to two
        round trips, which is what bounds the store's aggregate write rate.
        """
        await cur.execute(
            "INSERT INTO name_revisions (namespace, name, last_revision) VALUES (%s, %s, %s)"
            " ON CONFLICT (namespace, name) DO UPDATE SET last_revision = excluded.last_revision",
            (namespace, name, revision),
        )
        blob, size = snapshot if snapshot is not None else (None, None)
        stored_patch = feed_patch(patch)
        patch_text, patch_sealed = self._seal_pair(
            "changes.patch", namespace, context_id, revision, dumps(stored_patch) if stored_patch is not None else None
        )
        payload, payload_sealed = self._seal_pair(
            "events.payload", namespace, context_id, revision, dumps(event.payload) if event is not None else None
        )
        if blob is not None and self._sealing:
            blob = self._seal("history.snapshot", namespace, context_id, revision, blob)
        await cur.execute(
            _RECORD,
            {
                "id": context_id,
                "namespace": namespace,
                "name": name,
                "revision": revision,
                "op": op,
                "actor": actor,
                "now": now,
                "patch": patch_text,
                "patch_sealed": patch_sealed,
                "size": size,
                "snapshot": blob,
                "event_type": event.type if event is not None else None,
                "payload": payload,
                "payload_sealed": payload_sealed,
                "key_id": self._sealing_key if self._sealing else None,
                "key": event.idempotency_key if event is not None else None,
                "channel": CHANGES_CHANNEL,
                "audit": self.audit_signer is not None,
            },
        )
        counter = await cur.fetchone()
        if counter is None:
            raise InitializationError(f"database: the store_counter row is missing at {self.location}")
        sequence = int(counter[0])
        head = (int(counter[2]), str(counter[3])) if counter[2] is not None else None
        if len(self._own_sequences) >= _MAX_OWN_SEQUENCES:
            self._own_sequences.clear()  # rolled-back writes never come back; costs a few extra reads
        self._own_sequences.add(sequence)
        retention = self.retention.for_context(settings or {})
        if snapshot is not None and retention.due(revision):
            await self._prune(cur, context_id, revision, retention, now)
        change = Change(
            sequence=sequence,
            context_id=context_id,
            namespace=namespace,
            name=name,
            revision=revision,
            op=op,
            actor=actor,
            timestamp=now,
            patch=patch,
        )
        if head is not None:
            await self._write_audit(cur, AuditEntry.of_change(change, audit), head, now)
        return change

    # -- the audit log ----------------------------------------------------------------------

    async def _append_audit(self, cur: _Cursor, entry: AuditEntry) -> AuditRecord | None:
        """Chain ``entry`` to the last row: lock the chain head (held to commit), then append."""
        if self.audit_signer is None:
            return None
        await cur.execute(_AUDIT_LOCK_HEAD)
        head = await cur.fetchone()
        if head is None:
            raise InitializationError(f"database: the audit_head row is missing at {self.location}")
        return await self._write_audit(cur, entry, (int(head[0]), str(head[1])), utcnow())

    async def _write_audit(
        self, cur: _Cursor, entry: AuditEntry, head: tuple[int, str], now: datetime
    ) -> AuditRecord | None:
        """Append the row numbered ``head[0]``, chained to ``head[1]`` (the head is locked)."""
        signer = self.audit_signer
        if signer is None:
            return None
        sequence, previous = head
        record = AuditRecord.chained(entry, sequence=sequence, timestamp=now, signer=signer, previous=previous)
        await cur.execute(
            _AUDIT_APPEND,
            (record.hmac, record.sequence, now, *record.stored_values()),
        )
        return record

    async def append_audit(self, entry: AuditEntry) -> AuditRecord | None:
        if self.audit_signer is None:
            return None

        async def work(cur: _Cursor) -> AuditRecord | None:
            return await self._append_audit(cur, entry)

        return await self._run(work, writing=True)

    async def read_audit(self, query: AuditQuery) -> list[AuditRecord]:
        async def work(cur: _Cursor) -> list[TupleRow]:
            await cur.execute(
                f"SELECT {AUDIT_COLUMNS} FROM audit_log"
                " WHERE (%(namespace)s::text IS NULL OR namespace = %(namespace)s)"
                " AND (%(context)s::text IS NULL OR context = %(context)s)"
                " AND (%(prefix)s::text IS NULL OR (context >= %(prefix)s AND context < %(prefix)s || '~'))"
                " AND (%(principal)s::text IS NULL OR principal = %(principal)s)"
                " AND (%(operation)s::text IS NULL OR operation = %(operation)s)"
                " AND (%(since)s::timestamptz IS NULL OR timestamp >= %(since)s)"
                " AND (%(until)s::timestamptz IS NULL OR timestamp < %(until)s)"
                " AND (%(after)s::bigint IS NULL OR sequence > %(after)s)"
                " AND (%(before)s::bigint IS NULL OR sequence < %(before)s)"
                + (" ORDER BY sequence DESC" if query.newest_first else " ORDER BY sequence")
                + " LIMIT %(limit)s",
                {
                    "namespace": query.namespace,
                    "context": query.context,
                    "prefix": query.prefix or None,
                    "principal": query.principal,
                    "operation": query.operation,
                    "since": query.since,
                    "until": query.until,
                    "after": query.after,
                    "before": query.before,
                    "limit": query.limit,
                },
            )
            return await cur.fetchall()

        return [decode_audit(r) for r in await self._run(work, writing=False)]

    async def _prune(
        self, cur: _Cursor, context_id: ContextId, revision: int, retention: Retention, now: datetime
    ) -> None:
        """Drop history beyond retention and the change rows that went with it (as on SQLite)."""
        oldest_query = "SELECT sequence FROM history WHERE context_id = %s ORDER BY revision LIMIT 1"
        await cur.execute(oldest_query, (context_id,))
        oldest = await cur.fetchone()
        if oldest is None:
            return
        if retention.keep_revisions > 0:
            await cur.execute(
                "DELETE FROM history WHERE context_id = %s AND revision <= %s",
                (context_id, revision - retention.keep_revisions),
            )
        if retention.keep_days is not None:
            await cur.execute(
                "DELETE FROM history WHERE context_id = %s AND revision < %s AND timestamp < %s",
                (context_id, revision, now - timedelta(days=retention.keep_days)),
            )
        await cur.execute(oldest_query, (context_id,))
        kept = await cur.fetchone()
        if kept is not None and kept[0] > oldest[0]:
            await cur.execute(
                "DELETE FROM changes WHERE context_id = %s AND sequence >= %s AND sequence < %s AND op <> 'register'",
                (context_id, oldest[0], kept[0]),
            )

    # -- reads ------------------------------------------------------------------------------

    async def get(self, namespace: str, name: str) -> StoredContext | None:
        async def work(cur: _Cursor) -> TupleRow | None:
            await cur.execute(_LIVE_ROW, (namespace, name))
            return await cur.fetchone()

        row = await self._run(work, writing=False)
        if row is None:
            return None
        row = self._context_row(row)
        return await _off_loop(len(row[9]), _decode_context, row)

    async def get_by_id(self, context_id: ContextId) -> StoredContext | None:
        async def work(cur: _Cursor) -> TupleRow | None:
            await cur.execute(
                f"SELECT {_CONTEXT_SELECT} FROM contexts WHERE id = %s AND deleted_at IS NULL", (context_id,)
            )
            return await cur.fetchone()

        row = await self._run(work, writing=False)
        if row is None:
            return None
        row = self._context_row(row)
        return await _off_loop(len(row[9]), _decode_context, row)

    async def list(self, namespace: str, *, prefix: str, after: str | None, limit: int) -> list[StoredContext]:
        async def work(cur: _Cursor) -> list[TupleRow]:
            # Names are ASCII and COLLATE "C": the prefix range scan is exact, `~` sorts after all of them.
            await cur.execute(
                f"SELECT {_CONTEXT_SELECT} FROM contexts WHERE namespace = %s AND deleted_at IS NULL"
                " AND name >= %s AND name < %s AND name > %s ORDER BY name LIMIT %s",
                (namespace, prefix, prefix + "~", after or "", limit),
            )
            return await cur.fetchall()

        rows = [self._context_row(r) for r in await self._run(work, writing=False)]
        return await _off_loop(sum(len(r[9]) for r in rows), _decode_contexts, rows)

    async def read_revision(self, context_id: ContextId, revision: int) -> StoredRevision | int | None:
        async def work(cur: _Cursor) -> TupleRow | int | None:
            await cur.execute(
                "SELECT revision, sequence, op, actor, timestamp, size, snapshot FROM history"
                " WHERE context_id = %s AND revision = %s",
                (context_id, revision),
            )
            row = await cur.fetchone()
            if row is not None:
                if sealed_key_id(bytes(row[6][:8])) is not None:
                    # A sealed snapshot's associated data names the namespace: one more read.
                    namespace = await self._namespace_of(cur, context_id)
                    return (*row[:6], self._open_snapshot(namespace, context_id, int(row[0]), row[6]))
                return row
            await cur.execute(
                "SELECT revision, op FROM history WHERE context_id = %s ORDER BY revision LIMIT 1", (context_id,)
            )
            oldest = await cur.fetchone()
            # Below the registration snapshot lies an earlier context of the same name, not pruned history.
            if oldest is not None and revision < oldest[0] and oldest[1] != "register":
                return int(oldest[0])
            return None

        found = await self._run(work, writing=False)
        if found is None or isinstance(found, int):
            return found
        return StoredRevision(
            context_id=context_id,
            entry=decode_history(found),
            state=await _off_loop(found[5], _revision_state, found[6]),
        )

    async def history(self, context_id: ContextId, *, before: int | None, limit: int) -> list[HistoryEntry]:
        async def work(cur: _Cursor) -> list[TupleRow]:
            await cur.execute(
                "SELECT revision, sequence, op, actor, timestamp, size FROM history"
                " WHERE context_id = %s AND revision < %s ORDER BY revision DESC LIMIT %s",
                (context_id, before if before is not None else 2**62, limit),
            )
            return await cur.fetchall()

        rows = await self._run(work, writing=False)
        return [decode_history(r) for r in rows]

    async def changes_after(self, sequence: int, *, limit: int) -> list[Change]:
        async def work(cur: _Cursor) -> list[TupleRow]:
            await cur.execute(
                "SELECT sequence, context_id, namespace, name, revision, op, actor, timestamp, patch, patch_sealed"
                " FROM changes WHERE sequence > %s ORDER BY sequence LIMIT %s",
                (sequence, limit),
            )
            return await cur.fetchall()

        return [decode_change(r, r[8]) for r in map(self._change_row, await self._run(work, writing=False))]

    async def poll_changes(self, sequence: int, *, limit: int, force: bool) -> list[Change]:
        # An index range probe on the changes primary key is as cheap as any "anything new?"
        # check would be, so ``force`` changes nothing here; announcements say when to call.
        return await self.changes_after(sequence, limit=limit)

    async def last_sequence(self) -> int:
        async def work(cur: _Cursor) -> int:
            if await self._schema_version(cur) == 0:  # not migrated yet (db status / db migrate)
                return 0
            await cur.execute("SELECT value FROM store_counter WHERE name = 'sequence'")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        return await self._run(work, writing=False)

    async def status(self) -> StoreStatus:
        async def work(cur: _Cursor) -> StoreStatus:
            version = await self._schema_version(cur)
            contexts = last = 0
            size: int | None = None
            if version > 0:
                await cur.execute(
                    "SELECT (SELECT count(*) FROM contexts WHERE deleted_at IS NULL),"
                    " (SELECT value FROM store_counter WHERE name = 'sequence')"
                )
                row = await cur.fetchone()
                if row is not None:
                    contexts, last = int(row[0]), int(row[1] or 0)
                await cur.execute(
                    "SELECT sum(pg_total_relation_size(to_regclass(t)))::bigint FROM unnest(%s::text[]) AS t",
                    (
                        [
                            "contexts",
                            "name_revisions",
                            "history",
                            "changes",
                            "events",
                            "dead_letters",
                            "store_counter",
                            "encryption_keys",
                            "audit_log",
                            "audit_head",
                            "schema_migrations",
                        ],
                    ),
                )
                total = await cur.fetchone()
                size = int(total[0]) if total and total[0] is not None else None
            key_ids = await self._sealing_key_ids(cur) if version > 0 else []
            await cur.execute("SELECT current_schema(), current_setting('server_version')")
            info = await cur.fetchone()
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

    # -- export / import / backup -----------------------------------------------------------

    async def export_records(self) -> AsyncGenerator[JSONObject]:
        """Every record, read in pages inside one REPEATABLE READ snapshot: a consistent export."""
        if self._pool is None:
            raise InitializationError("database: the store is not open")
        yield header_record()
        requested = _cancel_requests()
        try:
            async with self._pool.connection() as conn, conn.cursor() as cur:
                _deliver_swallowed_cancel(requested)
                await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                # The consumer may be slow (a pipe): no idle-in-transaction limit here.
                await self._begin(cur, idle_timeout_ms=0)
                namespaces: dict[str, str] = {}
                for kind in EXPORT_KINDS:
                    after: tuple[Any, ...] | None = None
                    while True:
                        await cur.execute(_export_select(kind, after is not None), (*(after or ()), _EXPORT_PAGE))
                        rows = await cur.fetchall()
                        if not rows:
                            break
                        if kind.table == "contexts":
                            namespaces.update((str(r[0]), str(r[1])) for r in rows)
                        plain = [self._open_export_row(kind, r, namespaces) for r in rows]
                        for record in await asyncio.to_thread(export_page, kind, plain):
                            yield record
                        after = kind.key_of(rows[-1])
                await conn.commit()
        except PoolTimeout as exc:
            raise StoreBusyError(
                f"database: no connection to PostgreSQL at {self.location} within {self.pool_timeout_s:g} s; "
                "nothing was exported, retry"
            ) from exc
        except psycopg.Error as exc:
            raise self._translate(exc, False) from exc

    async def import_records(self, records: Iterable[JSONObject], *, actor: str = "local") -> int:
        rows = await asyncio.to_thread(import_rows, list(records), identifier=_as_is, timestamp=_as_is)

        async def work(cur: _Cursor) -> int:
            # The counter row first: a concurrent writer or importer waits for this import.
            await cur.execute("SELECT value FROM store_counter WHERE name = 'sequence' FOR UPDATE")
            await cur.execute("SELECT (SELECT count(*) FROM contexts), (SELECT count(*) FROM changes)")
            counts = await cur.fetchone()
            existing, changes = (int(counts[0]), int(counts[1])) if counts else (0, 0)
            if existing or changes:
                raise StateUpdateError(
                    f"import: the target database {self.location} is not empty ({existing} contexts, "
                    f"{changes} changes); import into a new, empty database or schema"
                )
            namespaces = {str(row[0]): str(row[1]) for row in rows.rows["context"]}
            if self._sealing:
                await self._note_key(cur)
            for kind, table_rows in rows.tables():
                if self._sealing and any(c.table == kind.table for c in _SEALED_COLUMNS):
                    insert, sealed_rows = self._sealed_import(kind, table_rows, namespaces)
                    await cur.executemany(insert, sealed_rows)
                else:
                    await cur.executemany(kind.insert("%s"), table_rows)
            # The sequence and the event and dead letter ids continue after everything imported.
            await cur.execute(
                "UPDATE store_counter SET value = greatest(value,"
                " (SELECT coalesce(max(sequence), 0) FROM changes),"
                " (SELECT coalesce(max(sequence), 0) FROM history)) WHERE name = 'sequence'"
                " RETURNING value, pg_notify(%s, value::text)",
                (CHANGES_CHANNEL,),
            )
            counter = await cur.fetchone()
            for entry in import_entries(rows, actor=actor, last_sequence=int(counter[0]) if counter else 0):
                await self._append_audit(cur, entry)
            await cur.execute(
                "SELECT setval(pg_get_serial_sequence('events', 'id'), max(id)) FROM events HAVING count(*) > 0"
            )
            await cur.execute(
                "SELECT setval(pg_get_serial_sequence('dead_letters', 'id'), max(id)) FROM dead_letters"
                " HAVING count(*) > 0"
            )
            return rows.contexts

        return await self._run(work, writing=True)

    async def backup(self, destination: Path) -> None:
        """A consistent export (one snapshot) as JSON lines; restore it with ``groundhog-mcp import``.

        A physical copy of a PostgreSQL database is ``pg_dump``'s job, not ours. With encryption
        at rest on, the export would be the decrypted contents: refused (``export --plaintext``
        says so explicitly; ``pg_dump`` copies the sealed values).
        """
        if self.cipher is not None:
            raise StateUpdateError(
                "backup: on PostgreSQL a backup is a JSON export, which with encryption at rest on would hold the "
                "decrypted contents; use pg_dump (it copies the encrypted values), or `export --plaintext` to "
                "write them decrypted on purpose. Nothing was written."
            )
        try:
            out = await asyncio.to_thread(_create_exclusive, destination)
        except FileExistsError:
            raise StateUpdateError(f"backup: {destination} already exists; choose a new file name") from None
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

    # -- encryption at rest: export, import, rotate-key --------------------------------------

    def _open_export_row(self, kind: RecordKind, row: TupleRow, namespaces: dict[str, str]) -> tuple[Any, ...]:
        """A row read with ``_export_select`` as ``kind.select_list`` would read it, in plaintext."""
        columns = [f.select for f in kind.fields]
        width = len(columns)
        extras = _export_extras(kind)
        values = list(row[:width])
        for sealed in _sealed_of(kind.table):
            index = columns.index(sealed.plain)
            value = values[index] if sealed.in_place else row[width + extras.index(sealed.sealed)]
            if value is None or sealed_key_id(bytes(value[:8])) is None:
                continue
            key = str(values[columns.index(sealed.context)])
            number = int(values[columns.index(sealed.number)])
            namespace = str(values[columns.index(sealed.namespace)]) if sealed.namespace else namespaces.get(key, "")
            opened = self._open(sealed.name, namespace, key, number, value)
            values[index] = opened if sealed.in_place else opened.decode("utf-8")
        return tuple(values)

    def _sealed_import(
        self, kind: RecordKind, table_rows: list[tuple[Any, ...]], namespaces: dict[str, str]
    ) -> tuple[LiteralString, list[tuple[Any, ...]]]:
        """The insert of ``kind`` with its contents sealed, and its rows."""
        columns: list[LiteralString] = [c for f in kind.fields for c in f.columns]
        sealed_columns = _sealed_of(kind.table)
        extras: list[LiteralString] = [c.sealed for c in sealed_columns if not c.in_place]
        out: list[tuple[Any, ...]] = []
        for row in table_rows:
            values = list(row)
            added: list[Any] = []
            for sealed in sealed_columns:
                index = columns.index(sealed.plain)
                value = values[index]
                if value is None:
                    if not sealed.in_place:
                        added.append(None)
                    continue
                key = str(values[columns.index(sealed.context)])
                number = int(values[columns.index(sealed.number)])
                namespace = (
                    str(values[columns.index(sealed.namespace)]) if sealed.namespace else namespaces.get(key, "")
                )
                blob = self._seal(sealed.name, namespace, key, number, value)
                if sealed.in_place:
                    values[index] = blob
                else:
                    values[index] = None
                    added.append(blob)
            out.append((*values, *added))
        names = ", ".join([*columns, *extras])
        placeholders = ", ".join("%s" for _ in [*columns, *extras])
        return f"INSERT INTO {kind.table} ({names}) VALUES ({placeholders})", out

    async def rotate_keys(
        self,
        *,
        batch_size: int = 500,
        progress: Callable[[RotationProgress], None] | None = None,
        max_batches: int | None = None,
    ) -> bool:
        """Rewrite every sealed value not under the cipher's current key (see
        ``SQLiteStore.rotate_keys``): each batch is its own transaction, its rows locked (a
        concurrent write waits, or is waited for), so an interrupted run loses nothing and the
        next run continues where it stopped. True when done, False when ``max_batches`` stopped it.
        """
        batches = 0
        while True:
            pending = await self._run(self._rotation_pending, writing=False)
            if not any(pending.values()):
                if await self._run(self._finish_rotation, writing=True):
                    return True
                continue  # another instance wrote under an old key meanwhile
            for sealed in _SEALED_COLUMNS:
                if not pending[sealed.name]:
                    continue
                after: tuple[Any, ...] | None = None
                done = 0
                while True:
                    if max_batches is not None and batches >= max_batches:
                        return False
                    count, after = await self._run(
                        functools.partial(self._rotate_batch, sealed=sealed, after=after, batch_size=batch_size),
                        writing=True,
                    )
                    if after is None:
                        break
                    batches += 1
                    done += count
                    if progress is not None:
                        progress(RotationProgress(sealed.name, done, pending[sealed.name], batches))

    def _stale(self, sealed: _SealedColumn) -> tuple[LiteralString, tuple[Any, ...]]:
        """The SQL condition (and its parameters) of a value not stored the way the current key wants."""
        key_id = self._sealing_key
        if key_id is not None:
            prefix = SEALED_MAGIC + bytes.fromhex(key_id)
            if sealed.in_place:
                return f"substring({sealed.plain} FROM 1 FOR 8) <> %s", (prefix,)
            return f"({sealed.plain} IS NOT NULL OR substring({sealed.sealed} FROM 1 FOR 8) <> %s)", (prefix,)
        if sealed.in_place:
            return f"substring({sealed.plain} FROM 1 FOR 4) = %s", (SEALED_MAGIC,)
        return f"{sealed.sealed} IS NOT NULL", ()

    async def _rotation_pending(self, cur: _Cursor) -> dict[str, int]:
        pending: dict[str, int] = {}
        for sealed in _SEALED_COLUMNS:
            condition, params = self._stale(sealed)
            await cur.execute(f"SELECT count(*) FROM {sealed.table} WHERE {condition}", params)
            row = await cur.fetchone()
            pending[sealed.name] = int(row[0]) if row else 0
        return pending

    async def _rotate_batch(
        self, cur: _Cursor, *, sealed: _SealedColumn, after: tuple[Any, ...] | None, batch_size: int
    ) -> tuple[int, tuple[Any, ...] | None]:
        """Rewrite up to ``batch_size`` stale values after key ``after`` (rows locked); returns how
        many and the last key (None when there were none left)."""
        condition, params = self._stale(sealed)
        keys = ", ".join(sealed.key)
        namespace: LiteralString = sealed.namespace or "NULL"
        where: LiteralString = f"({keys}) > ({', '.join('%s' for _ in sealed.key)}) AND " if after is not None else ""
        value: LiteralString = sealed.plain if sealed.in_place else f"{sealed.plain}, {sealed.sealed}"
        await cur.execute(
            f"SELECT {keys}, {namespace}, {sealed.context}, {sealed.number}, {value} FROM {sealed.table}"
            f" WHERE {where}{condition} ORDER BY {keys} LIMIT %s FOR UPDATE",
            (*(after or ()), *params, batch_size),
        )
        rows = await cur.fetchall()
        if not rows:
            return 0, None
        await self._note_key(cur)
        width = len(sealed.key)
        updates: list[tuple[Any, ...]] = []
        for row in rows:
            key_values = tuple(row[:width])
            row_namespace, context_id, number = row[width : width + 3]
            if row_namespace is None:
                row_namespace = await self._namespace_of(cur, context_id)
            stored = row[width + 3] if sealed.in_place or row[width + 4] is None else row[width + 4]
            if isinstance(stored, str):
                plain: bytes = stored.encode("utf-8")
            elif sealed_key_id(bytes(stored[:8])) is not None:
                plain = self._open(sealed.name, row_namespace, context_id, int(number), stored)
            else:
                plain = bytes(stored)
            if self._sealing:
                blob = self._seal(sealed.name, row_namespace, context_id, int(number), plain)
                updates.append((blob, *key_values) if sealed.in_place else (None, blob, *key_values))
            elif sealed.in_place:
                updates.append((plain, *key_values))
            else:
                updates.append((plain.decode("utf-8"), None, *key_values))
        target: LiteralString = (
            f"{sealed.plain} = %s" if sealed.in_place else f"{sealed.plain} = %s, {sealed.sealed} = %s"
        )
        match = " AND ".join(f"{k} = %s" for k in sealed.key)
        await cur.executemany(f"UPDATE {sealed.table} SET {target} WHERE {match}", updates)
        return len(rows), tuple(rows[-1][:width])

    async def _finish_rotation(self, cur: _Cursor) -> bool:
        """If no value is left under another key, forget the old key ids. The table lock makes a
        concurrent write that seals (it records its key id) wait for, or be seen by, the check."""
        await cur.execute("LOCK TABLE encryption_keys IN EXCLUSIVE MODE")
        for sealed in _SEALED_COLUMNS:
            condition, params = self._stale(sealed)
            await cur.execute(f"SELECT 1 FROM {sealed.table} WHERE {condition} LIMIT 1", params)
            if await cur.fetchone() is not None:
                return False
        await cur.execute("DELETE FROM encryption_keys WHERE key_id IS DISTINCT FROM %s", (self._sealing_key,))
        await self._note_key(cur)
        return True

    async def namespace_summary(self, namespace: str, prefix: str) -> tuple[int, int]:
        bounds = (namespace, prefix, prefix + "~")

        async def work(cur: _Cursor) -> tuple[int, int]:
            await cur.execute(
                "SELECT count(*) FROM contexts WHERE namespace = %s AND deleted_at IS NULL"
                " AND name >= %s AND name < %s",
                bounds,
            )
            count = await cur.fetchone()
            await cur.execute(
                "SELECT sequence FROM changes WHERE namespace = %s AND name >= %s AND name < %s"
                " ORDER BY sequence DESC LIMIT 1",
                bounds,
            )
            last = await cur.fetchone()
            return int(count[0]) if count else 0, int(last[0]) if last else 0

        return await self._run(work, writing=False)


def _cancel_requests() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def _deliver_swallowed_cancel(requested: int) -> None:
    """Raise the cancellation a library swallowed since ``_cancel_requests()`` gave ``requested``.

    On Python 3.11, ``asyncio.wait_for`` (which psycopg_pool uses to wait for a connection)
    drops a cancellation that arrives as the connection does: the task would carry on, and a
    change feed or LISTEN loop being stopped would never stop. A cancellation that was
    delivered, or an ``asyncio.timeout`` that expired and took its own back, leaves the count
    where it was.
    """
    if _cancel_requests() > requested:
        raise asyncio.CancelledError


def _as_is(value: _T) -> _T:
    return value


def _create_exclusive(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("x", encoding="utf-8")


def _split_parameters(url: str) -> tuple[str, dict[str, str]]:
    """Take our query parameters (``schema``, ``listen_url``) out of a URL: libpq would reject them."""
    if not url.startswith(("postgresql://", "postgres://")):
        return url, {}
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _OUR_PARAMETERS}
    if not ours:
        return url, {}
    rest = urlencode([(k, v) for k, v in query if k not in _OUR_PARAMETERS])
    return urlunsplit(parts._replace(query=rest)), ours


def _pool_size(ours: dict[str, str], name: str, default: int) -> int:
    text = ours.get(name)
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise InitializationError(f"database: {name}={text!r} must be a whole number from 1 to 1000")
    return int(text)


def _location(params: dict[str, Any], schema: str | None) -> str:
    """Where the store is, for messages and ``status``: never the password."""
    user = f"{params['user']}@" if params.get("user") else ""
    host = params.get("host") or "localhost"
    port = f":{params['port']}" if params.get("port") else ""
    where = f"postgresql://{user}{host}{port}/{params.get('dbname') or ''}"
    return where + (f"?schema={schema}" if schema else "")


def _literal_identifier(name: str) -> LiteralString:
    """A schema name already checked against ``_SCHEMA_NAME``, quoted as an identifier."""
    if not _SCHEMA_NAME.fullmatch(name):  # pragma: no cover - checked in __init__
        raise InitializationError(f"database: schema {name!r} is not a plain identifier")
    return name  # type: ignore[return-value]  # validated: letters, digits and _ only


def _newer_schema(location: str, version: int) -> InitializationError:
    return InitializationError(
        f"database: {location} has schema version {version}, newer than this groundhog-mcp supports "
        f"({LATEST_SCHEMA_VERSION}); upgrade groundhog-mcp. The database was not modified."
    )


def _nothing(writing: bool) -> str:
    return "nothing was written" if writing else "nothing was read"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def _scalar(conn: _Connection, query: LiteralString) -> Any:
    async with conn.cursor() as cur:
        await cur.execute(query)
        row = await cur.fetchone()
    return row[0] if row else None
