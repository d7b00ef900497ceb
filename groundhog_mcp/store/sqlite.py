"""SQLite backend: one file, WAL, ``BEGIN IMMEDIATE``, ``synchronous=FULL``.

All database work runs on one thread this store owns; a unit of work from the store core
(:mod:`groundhog_mcp.store.core`) runs there to its end in one step (lock, check, mutate,
write state + history + change, commit), so a tool call costs one thread hop instead of one
per statement. What is SQLite's own lives here: the connection's thread, the write lock (group
commit: :mod:`~groundhog_mcp.store.sqlite_writer`), error translation, and the few statements
whose SQL differs; opening the file (start-up checks, migrations) is
:mod:`~groundhog_mcp.store.sqlite_open`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, LiteralString, TypeVar

import structlog

from groundhog_mcp.errors import InitializationError, StateUpdateError, StoreBusyError
from groundhog_mcp.models import ContextId, format_timestamp
from groundhog_mcp.store.adapter import AuditHead, ChangeWrite, Params, Row, Runner, Tx, drive
from groundhog_mcp.store.base import SEALED_MAGIC, AuditSigner, Change, RecordCipher, Retention, StoreStatus
from groundhog_mcp.store.codec import SealedColumn
from groundhog_mcp.store.core import RotationProgress, StoreCore
from groundhog_mcp.store.migrations import LATEST_SCHEMA_VERSION, MIGRATIONS
from groundhog_mcp.store.records import ImportRows
from groundhog_mcp.store.rows import AUDIT_COLUMNS, AuditRecord
from groundhog_mcp.store.search import budget_exceeded
from groundhog_mcp.store.sqlite_files import BUSY_CODES, CORRUPT_CODES, backup_into, primary_code
from groundhog_mcp.store.sqlite_open import connect, migrate, schema_version, sealing_key_ids
from groundhog_mcp.store.sqlite_writer import CommitStats, GroupCommitter

__all__ = ["RotationProgress", "SQLiteStore"]

_T = TypeVar("_T")
_log = structlog.get_logger("groundhog_mcp.store")
_THREAD_NAME = "groundhog-sqlite"


@functools.lru_cache(maxsize=1024)
def _sql(text: str) -> str:
    """The core's ``%s`` placeholders as SQLite's ``?``."""
    return text.replace("%s", "?")


# A write passes the same id and time to several statements: each is converted once (the last
# one of each type is kept; a tuple is read and replaced whole, so threads cannot mix them up).
_last_id: tuple[object, str] = (None, "")
_last_time: tuple[object, str] = (None, "")


def _param(value: Any) -> Any:
    # Ids and times are stored as text (RFC 3339 in UTC: sortable, exact on round trip).
    global _last_id, _last_time
    if isinstance(value, uuid.UUID):
        last = _last_id
        if last[0] is not value:
            last = _last_id = (value, str(value))
        return last[1]
    if isinstance(value, datetime):
        last = _last_time
        if last[0] is not value:
            last = _last_time = (value, format_timestamp(value))
        return last[1]
    return value


_CONVERTED: Final = frozenset({uuid.UUID, datetime})


def _params(params: Params) -> tuple[Any, ...] | dict[str, Any]:
    if isinstance(params, dict):  # (not Mapping: an ABC check costs more than the rest)
        return {k: _param(v) for k, v in params.items()}
    # On the hot path: most values pass as they are, without a call each.
    return tuple([_param(p) if type(p) in _CONVERTED else p for p in params])


_AUDIT_SEQUENCE: Final = "audit"  # batch memo keys: the log's next sequence; with a namespace, its chain's next


class _SQLiteTx:
    """The core's :class:`~groundhog_mcp.store.adapter.Tx` on a connection: never suspends."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: LiteralString, params: Params = ()) -> None:
        self._conn.execute(_sql(sql), _params(params))

    async def executemany(self, sql: LiteralString, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(_sql(sql), [_params(r) for r in rows])

    async def fetchone(self, sql: LiteralString, params: Params = ()) -> tuple[Any, ...] | None:
        return self._conn.execute(_sql(sql), _params(params)).fetchone()

    async def fetchall(self, sql: LiteralString, params: Params = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(_sql(sql), _params(params)).fetchall()

    async def insert(self, sql: LiteralString, params: Params, key: LiteralString) -> int:
        return int(self._conn.execute(_sql(sql), _params(params)).lastrowid or 0)


def _run_unit(work: Callable[[Tx], Awaitable[_T]], conn: sqlite3.Connection) -> _T:
    return drive(work(_SQLiteTx(conn)))


class SQLiteStore(StoreCore):
    """The default backend: one SQLite file shared safely by several processes."""

    backend = "sqlite"
    # Stored times are RFC 3339 text in UTC (microseconds); this one has milliseconds, which is
    # enough for an expiry and still compares as text.
    NOW: LiteralString = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    _IMPORT_TARGET = "a new database file"
    INLINE_BYTES = sys.maxsize  # a unit of work already runs on the store's own thread
    # A costly mutation on that thread would hold up every other request meanwhile.
    PREPARES = True
    PREPARE_ABOVE_BYTES = 32 * 1024
    TEXT_INDEX = True  # context_text: an update's words are indexed by the core (store/text_index.py)

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_ms: int = 5000,
        synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL",
        auto_migrate: bool = True,
        retention: Retention | None = None,
        audit_signer: AuditSigner | None = None,
        cipher: RecordCipher | None = None,
    ) -> None:
        super().__init__(retention=retention, audit_signer=audit_signer, cipher=cipher)
        self.path = Path(path)
        self.auto_migrate = auto_migrate
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self._executor: ThreadPoolExecutor | None = None
        self._writer: GroupCommitter | None = None
        self._conn: sqlite3.Connection | None = None
        self._data_version: int | None = None
        self._thread: int | None = None  # the store's own thread (set when it opens the file)

    # -- plumbing ---------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            raise InitializationError("database: the store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except sqlite3.DatabaseError as exc:
            if primary_code(exc) not in CORRUPT_CODES:
                raise
            raise InitializationError(
                f"database: {self.path} is corrupt ({exc}); nothing was changed. Restore it from a backup, "
                "or salvage it with `sqlite3 FILE .recover`"
            ) from exc

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise InitializationError("database: the store is not open")
        return self._conn

    def _translate(self, exc: sqlite3.Error) -> Exception:
        # By SQLite's result code, never the message: the text of an error can quote anything
        # (a trigger's RAISE, an identifier), and it is not part of SQLite's interface.
        code = primary_code(exc)
        if code in BUSY_CODES:
            return StoreBusyError(
                f"database: locked by another process for more than busy_timeout={self.busy_timeout_ms} ms; "
                "nothing was written, retry the call"
            )
        if code == sqlite3.SQLITE_FULL:
            return StateUpdateError(
                f"database: disk full while writing {self.path}; nothing was written, the previous "
                "state is intact; free space and retry"
            )
        if code == sqlite3.SQLITE_READONLY:
            return StateUpdateError(
                f"database: {self.path} is read-only; nothing was written (check file and directory permissions)"
            )
        return StateUpdateError(f"database: {exc}; nothing was written")

    def _translate_any(self, exc: BaseException) -> BaseException:
        if not isinstance(exc, sqlite3.Error):
            return exc
        translated = self._translate(exc)
        translated.__cause__ = exc
        return translated

    async def _transaction(self, work: Callable[[Tx], Awaitable[_T]], *, writing: bool) -> _T:
        if not writing:
            return await self._call(lambda: _run_unit(work, self._db))
        if self._writer is None:
            raise InitializationError("database: the store is not open")
        # Group commit (store/sqlite_writer.py): answered after the COMMIT of the batch holding it.
        return await self._writer.submit_async(functools.partial(_run_unit, work))

    @property
    def commit_stats(self) -> CommitStats:
        """Write transactions committed, and the writes they carried (this process)."""
        return self._writer.stats if self._writer is not None else CommitStats()

    async def _bounded_read(self, work: Callable[[Tx], Awaitable[_T]], budget_ms: int) -> _T:
        return await self._call(self._run_bounded, work, budget_ms)

    def _run_bounded(self, work: Callable[[Tx], Awaitable[_T]], budget_ms: int) -> _T:
        # SQLite calls the handler every 10,000 virtual machine steps; True interrupts the statement.
        conn, deadline = self._db, time.monotonic() + budget_ms / 1000
        conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
        try:
            return drive(work(_SQLiteTx(conn)))
        except sqlite3.OperationalError as exc:
            if primary_code(exc) == sqlite3.SQLITE_INTERRUPT:
                raise budget_exceeded(budget_ms) from None
            raise self._translate(exc) from exc
        finally:
            conn.set_progress_handler(None, 0)

    @contextlib.asynccontextmanager
    async def _snapshot(self) -> AsyncGenerator[Runner]:
        # Pages are read one call each; the export is as consistent as its source is quiet.
        async def run(work: Callable[[Tx], Awaitable[Any]]) -> Any:
            return await self._transaction(work, writing=False)

        yield run

    async def _compute(self, size: int | None, fn: Callable[..., _T], *args: Any) -> _T:
        if threading.get_ident() == self._thread:
            return fn(*args)  # inside a unit of work: already on the store's own thread
        return await self._call(fn, *args)  # e.g. checking an import's records: off the event loop

    @property
    def _where(self) -> str:
        return str(self.path)

    # -- the statements whose SQL is SQLite's -------------------------------------------------

    async def _append_change(self, tx: Tx, write: ChangeWrite) -> tuple[int, AuditHead | None]:
        sequence = await tx.insert(
            "INSERT INTO changes (context_id, namespace, name, revision, op, actor, timestamp, patch)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
            (
                write.context_id,
                write.namespace,
                write.name,
                write.revision,
                write.op,
                write.actor,
                write.now,
                write.patch,
            ),
            "sequence",
        )
        if write.snapshot is not None:
            await tx.execute(
                "INSERT INTO history (context_id, revision, sequence, op, actor, timestamp, size, snapshot)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                (
                    write.context_id,
                    write.revision,
                    sequence,
                    write.op,
                    write.actor,
                    write.now,
                    write.size,
                    write.snapshot,
                ),
            )
        if write.event is not None:
            await tx.execute(
                "INSERT INTO events (context_id, type, payload, idempotency_key, revision, sequence, created_at)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s)",
                (
                    write.context_id,
                    write.event.type,
                    write.payload,
                    write.event.idempotency_key,
                    write.revision,
                    sequence,
                    write.now,
                ),
            )
        if self.codec.sealing:
            await self._note_key(tx)
        return sequence, None

    async def _audit_head(self, tx: Tx, namespace: str) -> AuditHead:
        # The caller's BEGIN IMMEDIATE lock orders the appends of every process; the chain's
        # head is its last row (index audit_log_chain), the log's next sequence max + 1. A write
        # after another in the same batch (one transaction) takes what that one appended.
        memo = self._batch_memo()
        if memo is not None:
            sequence, chain = memo.get(_AUDIT_SEQUENCE), memo.get((_AUDIT_SEQUENCE, namespace))
            if sequence is not None and chain is not None:
                return sequence, chain[0], chain[1]
        head = await tx.fetchone(
            "SELECT coalesce((SELECT max(sequence) FROM audit_log), 0) + 1, last.position, last.hmac"
            " FROM (SELECT 1) LEFT JOIN (SELECT position, hmac FROM audit_log WHERE namespace = %s"
            " AND position IS NOT NULL ORDER BY position DESC LIMIT 1) AS last ON 1",
            (namespace,),
        )
        if head is None or head[1] is None:
            return (int(head[0]) if head else 1), 1, ""
        return int(head[0]), int(head[1]) + 1, str(head[2])

    async def _chain_heads(self, tx: Tx, namespace: str | None) -> list[Row]:
        chains: LiteralString = "SELECT namespace, max(position) FROM audit_log WHERE position IS NOT NULL"
        if namespace is not None:
            chains += " AND namespace = %s"
        return await tx.fetchall(
            "SELECT namespace, position, hmac FROM audit_log WHERE position IS NOT NULL"
            f" AND (namespace, position) IN ({chains} GROUP BY namespace)",
            (namespace,) if namespace is not None else (),
        )

    async def _insert_audit(self, tx: Tx, record: AuditRecord) -> None:
        await tx.execute(
            f"INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (record.sequence, record.timestamp, *record.stored_values()),
        )
        memo = self._batch_memo()
        if memo is not None and record.position is not None:
            # The next append of the batch: every audit row goes through here, in this transaction.
            memo[_AUDIT_SEQUENCE] = record.sequence + 1
            memo[(_AUDIT_SEQUENCE, record.namespace)] = (record.position + 1, record.hmac)

    def _batch_memo(self) -> dict[Any, Any] | None:
        """The running group-commit batch's memo (None outside one: nothing is remembered)."""
        writer = self._writer
        return writer.batch_memo if writer is not None else None

    async def _reserve_dead_letter_id(self, tx: Tx) -> int:
        # AUTOINCREMENT's next id (under the write lock: nobody else takes it meanwhile).
        row = await tx.fetchone("SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'dead_letters'), 0) + 1")
        return int(row[0]) if row else 1

    async def _import_bounds(self, tx: Tx, rows: ImportRows | None) -> int:
        # Explicit ids and sequences: AUTOINCREMENT continues after the highest imported.
        if rows is None:
            return 0
        row = await tx.fetchone("SELECT seq FROM sqlite_sequence WHERE name = 'changes'")
        return int(row[0]) if row else 0

    def _stale(self, sealed: SealedColumn) -> tuple[LiteralString, tuple[Any, ...]]:
        column = sealed.column
        prefix = self.codec.current_prefix
        if prefix is not None:
            condition = f"{column} IS NOT NULL AND NOT (typeof({column}) = 'blob' AND substr({column}, 1, 8) = %s)"
            return condition, (prefix,)
        return f"typeof({column}) = 'blob' AND substr({column}, 1, 4) = %s", (SEALED_MAGIC,)

    async def _forget_old_keys(self) -> bool:
        if not await super()._forget_old_keys():
            return False
        # Fold the WAL back: its frames may still hold the values as they were before.
        await self._call(self._checkpoint)
        return True

    def _checkpoint(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- lifecycle (the checks and migrations: store/sqlite_open.py) -------------------------

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_THREAD_NAME)
        try:
            self._thread = await self._call(threading.get_ident)
            await self._call(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._writer = GroupCommitter(self._executor, lambda: self._db, self._translate_any)

    def _open_sync(self) -> None:
        self._conn = connect(
            self.path,
            busy_timeout_ms=self.busy_timeout_ms,
            synchronous=self.synchronous,
            codec=self.codec,
            auto_migrate=self.auto_migrate,
        )

    async def migrate(self) -> list[int]:
        return await self._call(lambda: migrate(self._db, self.path))

    async def close(self) -> None:
        if self._executor is None:
            return
        with contextlib.suppress(Exception):
            await self._call(self._close_sync)
        self._executor.shutdown(wait=True)
        self._executor = None
        self._writer = None

    def _close_sync(self) -> None:
        if self._conn is not None:
            # Fold the WAL back so a copied file is complete on its own.
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn = None

    # -- reads whose SQL is SQLite's ----------------------------------------------------------

    async def context_counts(self, context_ids: list[ContextId]) -> dict[ContextId, tuple[int, int, int]]:
        def run() -> dict[ContextId, tuple[int, int, int]]:
            counts: dict[ContextId, tuple[int, int, int]] = {}
            for context_id in context_ids:
                key = (str(context_id),)
                # Revisions are consecutive from the registration on, so the count survives pruning.
                row = self._db.execute(
                    "SELECT c.revision - r.revision FROM contexts c JOIN changes r ON r.context_id = c.id"
                    " WHERE c.id = ? AND r.op = 'register' ORDER BY r.sequence DESC LIMIT 1",
                    key,
                ).fetchone()
                updates = row[0] if row is not None else 0
                events = self._db.execute("SELECT count(*) FROM events WHERE context_id = ?", key).fetchone()[0]
                letters = self._db.execute(
                    "SELECT count(*) FROM dead_letters WHERE context_id = ? AND replayed_at IS NULL", key
                ).fetchone()[0]
                counts[context_id] = (int(updates), int(events), int(letters))
            return counts

        return await self._call(run)

    async def poll_changes(self, sequence: int, *, limit: int, force: bool) -> list[Change]:
        return await self._call(self._poll_changes_sync, sequence, limit, force)

    def _poll_changes_sync(self, sequence: int, limit: int, force: bool) -> list[Change]:
        # data_version moves only when *another* connection commits; our own writes come with force.
        data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if not force and data_version == self._data_version:
            return []
        self._data_version = data_version
        return drive(self._changes_after(_SQLiteTx(self._db), sequence, limit))

    async def last_sequence(self) -> int:
        return await self._call(self._last_sequence_sync)

    def _last_sequence_sync(self) -> int:
        exists = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone()
        if not exists:  # a database whose migrations have not run yet (db status / db migrate)
            return 0
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return int(row[0]) if row else 0

    async def status(self) -> StoreStatus:
        return await self._call(self._status_sync)

    def _status_sync(self) -> StoreStatus:
        conn = self._db
        version = schema_version(conn, self.path)
        contexts = (
            conn.execute("SELECT count(*) FROM contexts WHERE deleted_at IS NULL").fetchone()[0] if version else 0
        )
        page_count = conn.execute("PRAGMA page_count").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
        return StoreStatus(
            backend=self.backend,
            location=str(self.path),
            schema_version=version,
            latest_schema_version=LATEST_SCHEMA_VERSION,
            pending_migrations=[m.version for m in MIGRATIONS if m.version > version],
            contexts=int(contexts),
            last_sequence=self._last_sequence_sync(),
            size_bytes=int(page_count) * int(page_size),
            extra={
                "journal_mode": journal,
                "synchronous": self.synchronous,
                # Encryption at rest: the ids of the keys values are sealed with (empty: plaintext).
                "encryption_key_ids": sealing_key_ids(conn),
            },
        )

    async def backup(self, destination: Path, *, force: bool = False) -> None:
        await self._call(self._backup_sync, destination, force)

    def _backup_sync(self, destination: Path, force: bool) -> None:
        backup_into(self._db, destination, force)
