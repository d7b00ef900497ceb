"""SQLite backend: one file, WAL, ``BEGIN IMMEDIATE``, ``synchronous=FULL``.

All database work runs on one thread this store owns; a write is a single function on
that thread (lock, check, mutate, write state + history + change, commit), so a tool
call costs one thread hop instead of one per statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import sqlite3
import time
import zlib
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog

from groundhog_mcp.errors import (
    ConflictError,
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
    format_timestamp,
    json_diff,
    parse_timestamp,
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
    CHANGE_COLUMNS,
    CONTEXT_COLUMNS,
    DEAD_LETTER_COLUMNS,
    HISTORY_COLUMNS,
    decode_audit,
    decode_change,
    decode_context,
    decode_dead_letter,
    decode_event,
    decode_history,
)

__all__ = ["RotationProgress", "SQLiteStore"]

_T = TypeVar("_T")
_log = structlog.get_logger("groundhog_mcp.store")
# Start-up runs PRAGMA quick_check on files up to this size (~1 s of reading at worst here).
QUICK_CHECK_MAX_BYTES = 512 * 1024 * 1024

_EXPORT_PAGE = 500


@dataclasses.dataclass(frozen=True)
class _SealedColumn:
    """A column that holds state contents, sealed when a key is configured, and where the parts
    of its associated data come from."""

    table: str
    column: str
    key: tuple[str, ...]  # the primary key: rotate-key pages follow it
    namespace: str | None  # the namespace column; None: looked up by context id
    context: str  # the context id column
    number: str  # the revision column (dead letters: their id)

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"


_SEALED_COLUMNS: tuple[_SealedColumn, ...] = (
    _SealedColumn("contexts", "state", ("id",), "namespace", "id", "revision"),
    _SealedColumn("history", "snapshot", ("context_id", "revision"), None, "context_id", "revision"),
    _SealedColumn("changes", "patch", ("sequence",), "namespace", "context_id", "revision"),
    _SealedColumn("events", "payload", ("id",), None, "context_id", "revision"),
    _SealedColumn("dead_letters", "payload", ("id",), "namespace", "context_id", "id"),
    _SealedColumn("dead_letters", "last_error", ("id",), "namespace", "context_id", "id"),
)


@dataclasses.dataclass(frozen=True)
class RotationProgress:
    """One committed ``rotate-key`` batch."""

    column: str
    done: int  # rows of this column rewritten so far in this run
    pending: int  # rows of this column that needed it when this run started
    batches: int  # batches committed so far in this run (all columns)


def _compress(text: str) -> bytes:
    return zlib.compress(text.encode("utf-8"), 6)


def _decompress(blob: bytes) -> str:
    return zlib.decompress(blob).decode("utf-8")


class SQLiteStore:
    """The default backend: one SQLite file shared safely by several processes."""

    backend = "sqlite"

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
        self.path = Path(path)
        self.audit_signer = audit_signer
        self.cipher = cipher
        self._namespaces: dict[str, str] = {}
        self.auto_migrate = auto_migrate
        self.retention = retention or Retention()
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._data_version: int | None = None

    # -- plumbing ---------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            raise InitializationError("database: the store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except sqlite3.DatabaseError as exc:
            if "malformed" not in str(exc):
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

    @contextlib.contextmanager
    def _write_transaction(self) -> Generator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``; any exception rolls back and is translated."""
        conn = self._db
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise self._translate(exc) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._translate(exc) from exc
            raise

    def _translate(self, exc: sqlite3.Error) -> Exception:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return StoreBusyError(
                f"database: locked by another process for more than busy_timeout={self.busy_timeout_ms} ms; "
                "nothing was written, retry the call"
            )
        if "full" in text:
            return StateUpdateError(
                f"database: disk full while writing {self.path}; nothing was written, the previous "
                "state is intact; free space and retry"
            )
        if "readonly" in text or "read-only" in text:
            return StateUpdateError(
                f"database: {self.path} is read-only; nothing was written (check file and directory permissions)"
            )
        return StateUpdateError(f"database: {text}; nothing was written")

    # -- encryption at rest (docs: README "Encryption at rest") -----------------------------

    @property
    def _sealing(self) -> bool:
        return self.cipher is not None and self.cipher.key_id is not None

    def _check_keys(self, conn: sqlite3.Connection) -> None:
        """Refuse to open a database whose records are under a key the cipher does not have."""
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'encryption_keys'"
        ).fetchone()
        if not exists:
            return
        used = [row[0] for row in conn.execute("SELECT key_id FROM encryption_keys ORDER BY first_used, key_id")]
        key_mismatch(self.cipher, used, str(self.path), "The file was not modified.")

    def _note_key(self, conn: sqlite3.Connection) -> None:
        """Record the sealing key's id (in the write transaction that first uses it)."""
        if self.cipher is not None and self.cipher.key_id is not None:
            conn.execute(
                "INSERT OR IGNORE INTO encryption_keys (key_id, first_used) VALUES (?, ?)",
                (self.cipher.key_id, format_timestamp(utcnow())),
            )

    def _seal(self, column: str, namespace: str, context_id: str, number: int, plain: str | bytes) -> str | bytes:
        """A column value as stored: sealed under the current key, or ``plain`` without one."""
        if self.cipher is None or self.cipher.key_id is None:
            return plain
        data = plain.encode("utf-8") if isinstance(plain, str) else plain
        return self.cipher.seal(data, record_aad(column, namespace, context_id, number))

    def _open(self, column: str, namespace: str, context_id: str, number: int, value: Any) -> str | bytes:
        """A stored column value as plaintext (bytes when it was sealed)."""
        if sealed_key_id(value) is None:
            return value
        where = "dead letter" if column.startswith("dead_letters.") else "revision"
        if self.cipher is None:
            raise RecordIntegrityError(
                f"encryption: {column} of context {context_id} {where} {number} is encrypted and no key is configured"
            )
        try:
            return self.cipher.open(value, record_aad(column, namespace, context_id, number))
        except ValueError as exc:
            raise RecordIntegrityError(
                f"encryption: {column} of context {context_id} {where} {number} does not decrypt: {exc}; "
                "the record is left as it is"
            ) from None

    def _open_text(self, column: str, namespace: str, context_id: str, number: int, value: Any) -> str:
        plain = self._open(column, namespace, context_id, number, value)
        return plain.decode("utf-8") if isinstance(plain, bytes) else plain

    def _open_snapshot(self, namespace: str, context_id: str, revision: int, value: bytes) -> str:
        plain = self._open("history.snapshot", namespace, context_id, revision, value)
        return _decompress(plain if isinstance(plain, bytes) else plain.encode("utf-8"))

    def _namespace_of(self, conn: sqlite3.Connection, context_id: str) -> str:
        """The namespace a context id belongs to (never changes): part of the history and event AAD."""
        namespace = self._namespaces.get(context_id)
        if namespace is None:
            row = conn.execute("SELECT namespace FROM contexts WHERE id = ?", (context_id,)).fetchone()
            if row is None:
                return ""
            namespace = self._namespaces[context_id] = str(row[0])
        return namespace

    def _context(self, row: tuple[Any, ...]) -> StoredContext:
        return decode_context(row, self._open_text("contexts.state", row[1], row[0], row[8], row[9]))

    def _change(self, row: tuple[Any, ...]) -> Change:
        patch = row[8]
        if patch is not None:
            patch = self._open_text("changes.patch", row[2], row[1], row[4], patch)
        return decode_change(row, patch)

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="groundhog-sqlite")
        try:
            await self._call(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                str(self.path),
                timeout=self.busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise InitializationError(f"database: cannot open {self.path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            version = self._schema_version(conn)
            if version == 0:
                self._refuse_foreign(conn)
            else:
                self._check_pages(conn)
            if version > LATEST_SCHEMA_VERSION:
                raise InitializationError(
                    f"database: {self.path} has schema version {version}, newer than this groundhog-mcp "
                    f"supports ({LATEST_SCHEMA_VERSION}); upgrade groundhog-mcp. The file was not modified."
                )
            if self.auto_migrate:
                self._check_keys(conn)  # read-only: a wrong key leaves the file as it was
            if self.cipher is not None:
                # Freed pages and cells are zeroed, so replaced plaintext does not linger in the file.
                conn.execute("PRAGMA secure_delete=ON")
            self._enable_wal(conn)
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            if self.auto_migrate:
                self._migrate_sync(conn)
        except InitializationError:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise InitializationError(
                f"database: {self.path} is not a usable groundhog-mcp SQLite database ({exc}){self._read_only_cause()}"
            ) from exc
        self._conn = conn

    def _read_only_cause(self) -> str:
        """Why SQLite may have failed to open a file that is fine: it cannot write beside it."""
        directory = self.path.parent
        read_only_fs = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
        if not read_only_fs and os.access(directory, os.W_OK):
            return ""
        where = "is on a read-only file system" if read_only_fs else "is in a directory this user cannot write"
        return (
            f": {directory} {where}, and SQLite's WAL mode must create {self.path.name}-wal and "
            f"{self.path.name}-shm beside the database. Serve it from a writable place (copy it, or "
            "use `groundhog-mcp backup` elsewhere first)"
        )

    def _check_pages(self, conn: sqlite3.Connection) -> None:
        """``PRAGMA quick_check`` (read-only) on files up to QUICK_CHECK_MAX_BYTES: a damaged
        table page behind a valid header is refused at start-up, not met by a request later."""
        size = self.path.stat().st_size if self.path.exists() else 0
        if size > QUICK_CHECK_MAX_BYTES:
            _log.info("database.quick_check_skipped", path=str(self.path), size=size, limit=QUICK_CHECK_MAX_BYTES)
            return
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise InitializationError(
                f"database: {self.path} is corrupt (quick_check: {'; '.join(problems)[:300]}); the file was not "
                "modified. Restore it from a backup, or salvage it with `sqlite3 FILE .recover`"
            )

    def _schema_version(self, conn: sqlite3.Connection) -> int:
        """Read-only probe; raises sqlite3.DatabaseError on a corrupt or foreign file."""
        try:
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_migrations'"
            ).fetchone()
            if not exists:
                return 0
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
            return int(row[0] or 0)
        except sqlite3.DatabaseError as exc:
            raise InitializationError(
                f"database: {self.path} is not a usable SQLite database ({exc}); the file was not modified"
                f"{self._read_only_cause()}"
            ) from exc

    def _refuse_foreign(self, conn: sqlite3.Connection) -> None:
        """Never add our tables to another application's SQLite file."""
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        if tables:
            shown = ", ".join(tables[:5]) + (", …" if len(tables) > 5 else "")
            raise InitializationError(
                f"database: {self.path} is another application's SQLite database (tables: {shown}); "
                "groundhog-mcp will not add its tables to it. Choose another file; this one was not modified."
            )

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # Several processes opening a fresh file at once can see "locked" here even with a
        # busy timeout (the switch needs an exclusive lock): retry within the timeout.
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL").fetchone()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _migrate_sync(self, conn: sqlite3.Connection | None = None) -> list[int]:
        conn = conn or self._db
        if self._schema_version(conn) >= LATEST_SCHEMA_VERSION:
            return []
        applied: list[int] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            current = self._schema_version(conn)  # re-read under the lock: another process may have won
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                for statement in _statements(migration.sqlite):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, format_timestamp(utcnow())),
                )
                applied.append(migration.version)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return applied

    async def migrate(self) -> list[int]:
        return await self._call(self._migrate_sync)

    async def close(self) -> None:
        if self._executor is None:
            return
        with contextlib.suppress(Exception):
            await self._call(self._close_sync)
        self._executor.shutdown(wait=True)
        self._executor = None

    def _close_sync(self) -> None:
        if self._conn is not None:
            # Fold the WAL back so a copied file is complete on its own.
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn = None

    # -- writes -----------------------------------------------------------------------------

    async def register(
        self,
        new: NewContext,
        *,
        actor: str,
        if_exists: Literal["error", "return"],
        audit: AuditNote | None = None,
    ) -> tuple[StoredContext, Change | None]:
        return await self._call(self._register_sync, new, actor, if_exists, audit)

    def _register_sync(
        self, new: NewContext, actor: str, if_exists: Literal["error", "return"], audit: AuditNote | None = None
    ) -> tuple[StoredContext, Change | None]:
        with self._write_transaction() as conn:
            existing = self._live_row(conn, new.namespace, new.name)
            if existing is not None:
                if if_exists == "return":
                    return self._context(existing), None
                raise ConflictError.already_exists(new.name, existing[8])
            row = conn.execute(
                "SELECT last_revision FROM name_revisions WHERE namespace = ? AND name = ?",
                (new.namespace, new.name),
            ).fetchone()
            revision = (row[0] if row else 0) + 1
            now = format_timestamp(utcnow())
            state_text = dumps(new.state.to_json())
            self._note_key(conn)
            conn.execute(
                f"INSERT INTO contexts ({CONTEXT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    str(new.id),
                    new.namespace,
                    new.name,
                    new.version,
                    dumps(new.metadata),
                    dumps(new.settings),
                    dumps(new.schema) if new.schema is not None else None,
                    dumps(new.handlers),
                    revision,
                    self._seal("contexts.state", new.namespace, str(new.id), revision, state_text),
                    len(state_text.encode("utf-8")),
                    now,
                    now,
                ),
            )
            stored = registered(
                new, revision=revision, state_size=len(state_text.encode("utf-8")), now=parse_timestamp(now)
            )
            change = self._record(conn, stored, "register", actor, now, None, state_text, audit)
            return stored, change

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
        return await self._call(self._mutate_sync, namespace, name, expected_revision, mutator, actor, event, audit)

    def _mutate_sync(
        self,
        namespace: str,
        name: str,
        expected_revision: int | None,
        mutator: Mutator,
        actor: str,
        event: EventRecord | None = None,
        audit: AuditNote | None = None,
    ) -> tuple[StoredContext, Change]:
        with self._write_transaction() as conn:
            row = self._live_row(conn, namespace, name)
            if row is None:
                raise NotFoundError(f"name: no context named {name!r}")
            current = self._context(row)
            if event is not None and event.idempotency_key is not None:
                seen = self._find_event(conn, current.id, event.idempotency_key)
                if seen is not None:
                    raise EventAlreadyHandled(seen)
            self._check_expected(conn, current, expected_revision)
            mutation = mutator(current)
            state_text = dumps(mutation.state.to_json())
            size = len(state_text.encode("utf-8"))
            now = format_timestamp(utcnow())
            revision = current.revision + 1
            key = str(current.id)
            self._note_key(conn)
            conn.execute(
                "UPDATE contexts SET revision = ?, state = ?, state_size = ?, updated_at = ? WHERE id = ?",
                (revision, self._seal("contexts.state", namespace, key, revision, state_text), size, now, key),
            )
            stored = dataclasses.replace(
                current, revision=revision, state=mutation.state, state_size=size, updated_at=parse_timestamp(now)
            )
            change = self._record(conn, stored, mutation.op, actor, now, mutation.patch, state_text, audit)
            if event is not None:
                conn.execute(
                    "INSERT INTO events (context_id, type, payload, idempotency_key, revision, sequence, created_at)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (
                        str(stored.id),
                        event.type,
                        self._seal("events.payload", namespace, key, revision, dumps(event.payload)),
                        event.idempotency_key,
                        revision,
                        change.sequence,
                        now,
                    ),
                )
            return stored, change

    # -- events and dead letters ------------------------------------------------------------

    def _find_event(self, conn: sqlite3.Connection, context_id: ContextId, key: str) -> StoredEvent | None:
        row = conn.execute(
            "SELECT id, type, revision, sequence, created_at FROM events WHERE context_id = ? AND idempotency_key = ?",
            (str(context_id), key),
        ).fetchone()
        if row is None:
            return None
        return decode_event(row, context_id, key)

    async def find_event(self, context_id: ContextId, idempotency_key: str) -> StoredEvent | None:
        return await self._call(lambda: self._find_event(self._db, context_id, idempotency_key))

    async def add_dead_letter(
        self, letter: DeadLetter, *, actor: str = "local", audit: AuditNote | None = None
    ) -> DeadLetter:
        return await self._call(self._add_dead_letter_sync, letter, actor, audit)

    def _add_dead_letter_sync(self, letter: DeadLetter, actor: str, audit: AuditNote | None) -> DeadLetter:
        with self._write_transaction() as conn:
            if letter.id:
                error = self._seal(
                    "dead_letters.last_error", letter.namespace, str(letter.context_id), letter.id, letter.last_error
                )
                self._note_key(conn)
                conn.execute(
                    "UPDATE dead_letters SET attempts = attempts + ?, last_error = ? WHERE id = ?",
                    (letter.attempts, error, letter.id),
                )
                self._append_audit(conn, AuditEntry.of_dead_letter(letter, actor, audit), format_timestamp(utcnow()))
                return letter
            if self._sealing:
                sealed = self._add_sealed_dead_letter(conn, letter)
                self._append_audit(conn, AuditEntry.of_dead_letter(sealed, actor, audit), format_timestamp(utcnow()))
                return sealed
            cursor = conn.execute(
                "INSERT INTO dead_letters (namespace, context_id, name, type, payload, idempotency_key, attempts,"
                " last_error, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    letter.namespace,
                    str(letter.context_id),
                    letter.name,
                    letter.type,
                    dumps(letter.payload),
                    letter.idempotency_key,
                    letter.attempts,
                    letter.last_error,
                    format_timestamp(letter.created_at),
                ),
            )
            stored = dataclasses.replace(letter, id=int(cursor.lastrowid or 0))
            self._append_audit(conn, AuditEntry.of_dead_letter(stored, actor, audit), format_timestamp(utcnow()))
            return stored

    def _add_sealed_dead_letter(self, conn: sqlite3.Connection, letter: DeadLetter) -> DeadLetter:
        # The associated data names the letter's id, known after the insert: contents go in second.
        cursor = conn.execute(
            "INSERT INTO dead_letters (namespace, context_id, name, type, payload, idempotency_key, attempts,"
            " last_error, created_at) VALUES (?,?,?,?,X'',?,?,X'',?)",
            (
                letter.namespace,
                str(letter.context_id),
                letter.name,
                letter.type,
                letter.idempotency_key,
                letter.attempts,
                format_timestamp(letter.created_at),
            ),
        )
        letter_id = int(cursor.lastrowid or 0)
        key = str(letter.context_id)
        self._note_key(conn)
        conn.execute(
            "UPDATE dead_letters SET payload = ?, last_error = ? WHERE id = ?",
            (
                self._seal("dead_letters.payload", letter.namespace, key, letter_id, dumps(letter.payload)),
                self._seal("dead_letters.last_error", letter.namespace, key, letter_id, letter.last_error),
                letter_id,
            ),
        )
        return dataclasses.replace(letter, id=letter_id)

    def _dead_letter(self, row: tuple[Any, ...]) -> DeadLetter:
        namespace, key = row[1], row[2]
        return decode_dead_letter(
            row,
            self._open_text("dead_letters.payload", namespace, key, row[0], row[5]),
            self._open_text("dead_letters.last_error", namespace, key, row[0], row[8]),
        )

    async def list_dead_letters(
        self, namespace: str, *, name: str | None, after_id: int, limit: int, include_replayed: bool
    ) -> list[DeadLetter]:
        def run() -> list[DeadLetter]:
            sql = f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE namespace = ? AND id > ?"
            params: list[Any] = [namespace, after_id]
            if name is not None:
                sql += " AND name = ?"
                params.append(name)
            if not include_replayed:
                sql += " AND replayed_at IS NULL"
            rows = self._db.execute(sql + " ORDER BY id LIMIT ?", (*params, limit)).fetchall()
            return [self._dead_letter(r) for r in rows]

        return await self._call(run)

    async def get_dead_letter(self, namespace: str, letter_id: int) -> DeadLetter | None:
        def run() -> DeadLetter | None:
            row = self._db.execute(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE namespace = ? AND id = ?",
                (namespace, letter_id),
            ).fetchone()
            return self._dead_letter(row) if row is not None else None

        return await self._call(run)

    async def mark_replayed(self, letter_id: int, revision: int) -> None:
        def run() -> None:
            with self._write_transaction() as conn:
                conn.execute(
                    "UPDATE dead_letters SET replayed_at = ?, replay_revision = ? WHERE id = ?",
                    (format_timestamp(utcnow()), revision, letter_id),
                )

        await self._call(run)

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
        return await self._call(self._unregister_sync, namespace, name, expected_revision, purge, actor, audit)

    def _unregister_sync(
        self,
        namespace: str,
        name: str,
        expected_revision: int | None,
        purge: bool,
        actor: str,
        audit: AuditNote | None = None,
    ) -> Change:
        with self._write_transaction() as conn:
            row = self._live_row(conn, namespace, name)
            if row is None:
                raise NotFoundError(f"name: no context named {name!r}")
            current = self._context(row)
            self._check_expected(conn, current, expected_revision)
            now = format_timestamp(utcnow())
            stored = dataclasses.replace(current, revision=current.revision + 1)
            change = self._record(conn, stored, "unregister", actor, now, None, None, audit)
            if purge:
                # Purge removes the content everywhere: snapshots and the diffs in the change feed.
                conn.execute("DELETE FROM history WHERE context_id = ?", (str(current.id),))
                conn.execute("UPDATE changes SET patch = NULL WHERE context_id = ?", (str(current.id),))
                conn.execute("DELETE FROM events WHERE context_id = ?", (str(current.id),))
                conn.execute("DELETE FROM dead_letters WHERE context_id = ?", (str(current.id),))
                conn.execute("DELETE FROM contexts WHERE id = ?", (str(current.id),))
            elif self._sealing or sealed_key_id(row[9]) is not None:
                # The state's associated data names the revision: sealed again for the new one.
                key = str(current.id)
                state = self._seal("contexts.state", namespace, key, stored.revision, dumps(current.state.to_json()))
                self._note_key(conn)
                conn.execute(
                    "UPDATE contexts SET deleted_at = ?, revision = ?, updated_at = ?, state = ? WHERE id = ?",
                    (now, stored.revision, now, state, key),
                )
            else:
                conn.execute(
                    "UPDATE contexts SET deleted_at = ?, revision = ?, updated_at = ? WHERE id = ?",
                    (now, current.revision + 1, now, str(current.id)),
                )
            return change

    def _live_row(self, conn: sqlite3.Connection, namespace: str, name: str) -> tuple[Any, ...] | None:
        return conn.execute(
            f"SELECT {CONTEXT_COLUMNS} FROM contexts WHERE namespace = ? AND name = ? AND deleted_at IS NULL",
            (namespace, name),
        ).fetchone()

    def _check_expected(self, conn: sqlite3.Connection, current: StoredContext, expected: int | None) -> None:
        if expected is None or expected == current.revision:
            return
        missed: list[JSONObject] | None = None
        if 0 < expected < current.revision:
            row = conn.execute(
                "SELECT snapshot FROM history WHERE context_id = ? AND revision = ?",
                (str(current.id), expected),
            ).fetchone()
            if row is not None:
                missed = json_diff(
                    ContextState.from_json(
                        json.loads(self._open_snapshot(current.namespace, str(current.id), expected, row[0]))
                    ).document(),
                    current.state.document(),
                )
        raise ConflictError(current.name, expected, current.revision, missed)

    def _record(
        self,
        conn: sqlite3.Connection,
        ctx: StoredContext,
        op: str,
        actor: str,
        now: str,
        patch: list[JSONObject] | None,
        state_text: str | None,
        audit: AuditNote | None = None,
    ) -> Change:
        """Write the change row, the history snapshot, the name's revision high-water mark and
        the audit row."""
        stored_patch = feed_patch(patch)
        cursor = conn.execute(
            "INSERT INTO changes (context_id, namespace, name, revision, op, actor, timestamp, patch)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (
                str(ctx.id),
                ctx.namespace,
                ctx.name,
                ctx.revision,
                op,
                actor,
                now,
                (
                    self._seal("changes.patch", ctx.namespace, str(ctx.id), ctx.revision, dumps(stored_patch))
                    if stored_patch is not None
                    else None
                ),
            ),
        )
        sequence = int(cursor.lastrowid or 0)
        if state_text is not None:
            conn.execute(
                "INSERT INTO history (context_id, revision, sequence, op, actor, timestamp, size, snapshot)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (
                    str(ctx.id),
                    ctx.revision,
                    sequence,
                    op,
                    actor,
                    now,
                    len(state_text.encode("utf-8")),
                    self._seal("history.snapshot", ctx.namespace, str(ctx.id), ctx.revision, _compress(state_text)),
                ),
            )
        conn.execute(
            "INSERT INTO name_revisions (namespace, name, last_revision) VALUES (?, ?, ?)"
            " ON CONFLICT (namespace, name) DO UPDATE SET last_revision = excluded.last_revision",
            (ctx.namespace, ctx.name, ctx.revision),
        )
        retention = self.retention.for_context(ctx.settings)
        if state_text is not None and retention.due(ctx.revision):
            self._prune(conn, ctx, retention, now)
        change = Change(
            sequence=sequence,
            context_id=ctx.id,
            namespace=ctx.namespace,
            name=ctx.name,
            revision=ctx.revision,
            op=op,
            actor=actor,
            timestamp=parse_timestamp(now),
            patch=patch,
        )
        self._append_audit(conn, AuditEntry.of_change(change, audit), now)
        return change

    # -- the audit log ----------------------------------------------------------------------

    def _append_audit(self, conn: sqlite3.Connection, entry: AuditEntry, now: str) -> AuditRecord | None:
        """Chain ``entry`` to the last row, inside the caller's write transaction (whose
        ``BEGIN IMMEDIATE`` lock orders the appends of every process)."""
        signer = self.audit_signer
        if signer is None:
            return None
        last = conn.execute("SELECT sequence, hmac FROM audit_log ORDER BY sequence DESC LIMIT 1").fetchone()
        record = AuditRecord.chained(
            entry,
            sequence=last[0] + 1 if last else 1,
            timestamp=parse_timestamp(now),
            signer=signer,
            previous=last[1] if last else "",
        )
        conn.execute(
            f"INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (record.sequence, now, *record.stored_values()),
        )
        return record

    async def append_audit(self, entry: AuditEntry) -> AuditRecord | None:
        if self.audit_signer is None:
            return None
        return await self._call(self._append_audit_sync, entry)

    def _append_audit_sync(self, entry: AuditEntry) -> AuditRecord | None:
        with self._write_transaction() as conn:
            return self._append_audit(conn, entry, format_timestamp(utcnow()))

    async def read_audit(self, query: AuditQuery) -> list[AuditRecord]:
        return await self._call(self._read_audit_sync, query)

    def _read_audit_sync(self, query: AuditQuery) -> list[AuditRecord]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("namespace = ?", query.namespace),
            ("context = ?", query.context),
            ("principal = ?", query.principal),
            ("operation = ?", query.operation),
            ("timestamp >= ?", format_timestamp(query.since) if query.since else None),
            ("timestamp < ?", format_timestamp(query.until) if query.until else None),
            ("sequence > ?", query.after),
            ("sequence < ?", query.before),
        ):
            if value is not None:
                where.append(column)
                params.append(value)
        if query.prefix:
            # Names are ASCII ([A-Za-z0-9._-]), so a prefix range scan is exact; `~` sorts after all of them.
            where.append("context >= ? AND context < ?")
            params.extend((query.prefix, query.prefix + "~"))
        sql = f"SELECT {AUDIT_COLUMNS} FROM audit_log"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY sequence {'DESC' if query.newest_first else 'ASC'} LIMIT ?"
        rows = self._db.execute(sql, (*params, query.limit)).fetchall()
        return [decode_audit(r) for r in rows]

    def _prune(self, conn: sqlite3.Connection, ctx: StoredContext, retention: Retention, now: str) -> None:
        """Drop history beyond retention, and the diffs of the change rows that went with it."""
        key = str(ctx.id)
        oldest = conn.execute(
            "SELECT sequence FROM history WHERE context_id = ? ORDER BY revision LIMIT 1", (key,)
        ).fetchone()
        if oldest is None:
            return
        if retention.keep_revisions > 0:
            conn.execute(
                "DELETE FROM history WHERE context_id = ? AND revision <= ?",
                (key, ctx.revision - retention.keep_revisions),
            )
        if retention.keep_days is not None:
            cutoff = format_timestamp(parse_timestamp(now) - timedelta(days=retention.keep_days))
            conn.execute(
                "DELETE FROM history WHERE context_id = ? AND revision < ? AND timestamp < ?",
                (key, ctx.revision, cutoff),
            )
        kept = conn.execute(
            "SELECT sequence FROM history WHERE context_id = ? ORDER BY revision LIMIT 1", (key,)
        ).fetchone()
        if kept is not None and kept[0] > oldest[0]:
            # The change rows of pruned revisions go too (their diffs are state): rows shrunk in place
            # would leave sparse pages behind, deleted ones free whole pages for reuse. The
            # registration row stays: it anchors the count of updates.
            conn.execute(
                "DELETE FROM changes WHERE context_id = ? AND sequence >= ? AND sequence < ? AND op != 'register'",
                (key, oldest[0], kept[0]),
            )

    # -- reads ------------------------------------------------------------------------------

    async def get(self, namespace: str, name: str) -> StoredContext | None:
        return await self._call(self._get_sync, namespace, name)

    def _get_sync(self, namespace: str, name: str) -> StoredContext | None:
        row = self._live_row(self._db, namespace, name)
        return self._context(row) if row is not None else None

    async def get_by_id(self, context_id: ContextId) -> StoredContext | None:
        return await self._call(self._get_by_id_sync, context_id)

    def _get_by_id_sync(self, context_id: ContextId) -> StoredContext | None:
        row = self._db.execute(
            f"SELECT {CONTEXT_COLUMNS} FROM contexts WHERE id = ? AND deleted_at IS NULL", (str(context_id),)
        ).fetchone()
        return self._context(row) if row is not None else None

    async def list(self, namespace: str, *, prefix: str, after: str | None, limit: int) -> list[StoredContext]:
        return await self._call(self._list_sync, namespace, prefix, after, limit)

    def _list_sync(self, namespace: str, prefix: str, after: str | None, limit: int) -> list[StoredContext]:
        # Names are ASCII ([A-Za-z0-9._-]), so a prefix range scan is exact; `~` sorts after all of them.
        rows = self._db.execute(
            f"SELECT {CONTEXT_COLUMNS} FROM contexts WHERE namespace = ? AND deleted_at IS NULL"
            " AND name >= ? AND name < ? AND name > ? ORDER BY name LIMIT ?",
            (namespace, prefix, prefix + "~", after or "", limit),
        ).fetchall()
        return [self._context(r) for r in rows]

    async def read_revision(self, context_id: ContextId, revision: int) -> StoredRevision | int | None:
        return await self._call(self._read_revision_sync, context_id, revision)

    def _read_revision_sync(self, context_id: ContextId, revision: int) -> StoredRevision | int | None:
        conn = self._db
        row = conn.execute(
            "SELECT revision, sequence, op, actor, timestamp, size, snapshot FROM history"
            " WHERE context_id = ? AND revision = ?",
            (str(context_id), revision),
        ).fetchone()
        if row is None:
            oldest = conn.execute(
                "SELECT revision, op FROM history WHERE context_id = ? ORDER BY revision LIMIT 1", (str(context_id),)
            ).fetchone()
            # Below the registration snapshot lies an earlier context of the same name, not pruned history.
            if oldest is not None and revision < oldest[0] and oldest[1] != "register":
                return int(oldest[0])
            return None
        rev, snapshot = row[0], row[6]
        key = str(context_id)
        return StoredRevision(
            context_id=context_id,
            entry=decode_history(row),
            state=ContextState.from_json(
                json.loads(self._open_snapshot(self._namespace_of(conn, key), key, rev, snapshot))
            ),
        )

    async def history(self, context_id: ContextId, *, before: int | None, limit: int) -> list[HistoryEntry]:
        return await self._call(self._history_sync, context_id, before, limit)

    def _history_sync(self, context_id: ContextId, before: int | None, limit: int) -> list[HistoryEntry]:
        rows = self._db.execute(
            f"SELECT {HISTORY_COLUMNS} FROM history"
            " WHERE context_id = ? AND revision < ? ORDER BY revision DESC LIMIT ?",
            (str(context_id), before if before is not None else 2**62, limit),
        ).fetchall()
        return [decode_history(r) for r in rows]

    async def changes_after(self, sequence: int, *, limit: int) -> list[Change]:
        return await self._call(self._changes_after_sync, sequence, limit)

    def _changes_after_sync(self, sequence: int, limit: int) -> list[Change]:
        rows = self._db.execute(
            f"SELECT {CHANGE_COLUMNS} FROM changes WHERE sequence > ? ORDER BY sequence LIMIT ?",
            (sequence, limit),
        ).fetchall()
        return [self._change(r) for r in rows]

    async def poll_changes(self, sequence: int, *, limit: int, force: bool) -> list[Change]:
        return await self._call(self._poll_changes_sync, sequence, limit, force)

    def _poll_changes_sync(self, sequence: int, limit: int, force: bool) -> list[Change]:
        # data_version moves only when *another* connection commits; our own writes come with force.
        data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if not force and data_version == self._data_version:
            return []
        self._data_version = data_version
        return self._changes_after_sync(sequence, limit)

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
        version = self._schema_version(conn)
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
                "encryption_key_ids": self._sealing_key_ids(conn),
            },
        )

    def _sealing_key_ids(self, conn: sqlite3.Connection) -> list[str]:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'encryption_keys'"
        ).fetchone()
        if not exists:
            return []
        return [row[0] for row in conn.execute("SELECT key_id FROM encryption_keys ORDER BY first_used, key_id")]

    # -- export / import / backup -----------------------------------------------------------

    async def export_records(self) -> AsyncGenerator[JSONObject]:
        yield header_record()
        for kind in EXPORT_KINDS:
            after: tuple[Any, ...] | None = None
            while True:
                page, after = await self._call(self._export_page, kind, after)
                if not page:
                    break
                for record in page:
                    yield record

    def _export_page(
        self, kind: RecordKind, after: tuple[Any, ...] | None
    ) -> tuple[list[JSONObject], tuple[Any, ...] | None]:
        query = kind.select_page("?", after=after is not None)
        rows = self._db.execute(query, (*(after or ()), _EXPORT_PAGE)).fetchall()
        columns = [f.select for f in kind.fields]
        plain = [self._transcode_row(kind.table, columns, tuple(row), None) for row in rows]
        return export_page(kind, plain), (kind.key_of(rows[-1]) if rows else after)

    def _transcode_row(
        self, table: str, columns: list[str], row: tuple[Any, ...], namespaces: dict[str, str] | None
    ) -> tuple[Any, ...]:
        """``row`` (values of ``columns``) with its sealed values opened (``namespaces`` is None)
        or, with ``namespaces`` (context id → namespace of an import), plaintext values sealed."""
        values = list(row)
        for sealed in _SEALED_COLUMNS:
            if sealed.table != table or sealed.column not in columns:
                continue
            index = columns.index(sealed.column)
            if values[index] is None:
                continue
            key = str(values[columns.index(sealed.context)])
            number = int(values[columns.index(sealed.number)])
            if sealed.namespace is not None:
                namespace = str(values[columns.index(sealed.namespace)])
            elif namespaces is not None:
                namespace = namespaces.get(key, "")
            else:
                namespace = self._namespace_of(self._db, key)
            if namespaces is None:
                opened = self._open(sealed.name, namespace, key, number, values[index])
                if isinstance(opened, bytes) and sealed.name != "history.snapshot":
                    opened = opened.decode("utf-8")
                values[index] = opened
            else:
                values[index] = self._seal(sealed.name, namespace, key, number, values[index])
        return tuple(values)

    async def import_records(self, records: Iterable[JSONObject], *, actor: str = "local") -> int:
        return await self._call(self._import_sync, list(records), actor)

    def _import_sync(self, records: list[JSONObject], actor: str = "local") -> int:
        rows = import_rows(records, identifier=str, timestamp=format_timestamp)
        with self._write_transaction() as conn:
            existing = conn.execute("SELECT count(*) FROM contexts").fetchone()[0]
            changes = conn.execute("SELECT count(*) FROM changes").fetchone()[0]
            if existing or changes:
                raise StateUpdateError(
                    f"import: the target database {self.path} is not empty ({existing} contexts, "
                    f"{changes} changes); import into a new database file"
                )
            # Explicit ids and sequences: AUTOINCREMENT continues after the highest imported.
            namespaces = {str(row[0]): str(row[1]) for row in rows.rows["context"]}
            if self._sealing:
                self._note_key(conn)
            for kind, table_rows in rows.tables():
                if self._sealing:
                    columns = [c for f in kind.fields for c in f.columns]
                    table_rows = [self._transcode_row(kind.table, columns, row, namespaces) for row in table_rows]
                conn.executemany(kind.insert("?"), table_rows)
            now = format_timestamp(utcnow())
            for entry in import_entries(rows, actor=actor, last_sequence=self._last_sequence_sync()):
                self._append_audit(conn, entry, now)
            return rows.contexts

    async def backup(self, destination: Path) -> None:
        await self._call(self._backup_sync, destination)

    def _backup_sync(self, destination: Path) -> None:
        if destination.exists():
            raise StateUpdateError(f"backup: {destination} already exists; choose a new file name")
        destination.parent.mkdir(parents=True, exist_ok=True)
        target = sqlite3.connect(str(destination))
        try:
            self._db.backup(target)
        finally:
            target.close()

    # -- rotate-key ---------------------------------------------------------------------------

    async def rotate_keys(
        self,
        *,
        batch_size: int = 500,
        progress: Callable[[RotationProgress], None] | None = None,
        max_batches: int | None = None,
    ) -> bool:
        """Rewrite every sealed column value not under the cipher's current key: opened with any
        configured key (or read as plaintext), sealed under the current key (or, without one,
        written as plaintext). Each batch is its own transaction, so an interrupted run loses
        nothing and the next run continues where it stopped; writers keep working meanwhile.

        When no value is left under another key, the old key ids are forgotten (the database
        then opens with the current key alone) and True is returned; False when ``max_batches``
        stopped the run first.
        """
        batches = 0
        while True:
            pending = await self._call(self._rotation_pending)
            if not any(pending.values()):
                if await self._call(self._finish_rotation):
                    return True
                continue  # another process wrote under an old key meanwhile
            for sealed in _SEALED_COLUMNS:
                if not pending[sealed.name]:
                    continue
                after: tuple[Any, ...] | None = None
                done = 0
                while True:
                    if max_batches is not None and batches >= max_batches:
                        return False
                    count, after = await self._call(self._rotate_batch, sealed, after, batch_size)
                    if after is None:
                        break
                    batches += 1
                    done += count
                    if progress is not None:
                        progress(RotationProgress(sealed.name, done, pending[sealed.name], batches))

    def _stale(self, sealed: _SealedColumn) -> tuple[str, tuple[Any, ...]]:
        """The SQL condition (and its parameters) of a value not stored the way the current key wants."""
        column = sealed.column
        if self.cipher is not None and self.cipher.key_id is not None:
            prefix = SEALED_MAGIC + bytes.fromhex(self.cipher.key_id)
            condition = f"{column} IS NOT NULL AND NOT (typeof({column}) = 'blob' AND substr({column}, 1, 8) = ?)"
            return condition, (prefix,)
        return f"typeof({column}) = 'blob' AND substr({column}, 1, 4) = ?", (SEALED_MAGIC,)

    def _rotation_pending(self) -> dict[str, int]:
        pending: dict[str, int] = {}
        for sealed in _SEALED_COLUMNS:
            condition, params = self._stale(sealed)
            row = self._db.execute(f"SELECT count(*) FROM {sealed.table} WHERE {condition}", params).fetchone()
            pending[sealed.name] = int(row[0])
        return pending

    def _rotate_batch(
        self, sealed: _SealedColumn, after: tuple[Any, ...] | None, batch_size: int
    ) -> tuple[int, tuple[Any, ...] | None]:
        """Rewrite up to ``batch_size`` stale values after key ``after``, in one transaction;
        returns how many and the last key (None when there were none left)."""
        condition, params = self._stale(sealed)
        keys = ", ".join(sealed.key)
        namespace = sealed.namespace or "NULL"
        where = f"({keys}) > ({', '.join('?' for _ in sealed.key)}) AND " if after is not None else ""
        with self._write_transaction() as conn:
            rows = conn.execute(
                f"SELECT {keys}, {namespace}, {sealed.context}, {sealed.number}, {sealed.column} FROM {sealed.table}"
                f" WHERE {where}{condition} ORDER BY {keys} LIMIT ?",
                (*(after or ()), *params, batch_size),
            ).fetchall()
            if not rows:
                return 0, None
            self._note_key(conn)
            width = len(sealed.key)
            for row in rows:
                key_values = tuple(row[:width])
                row_namespace, context_id, number, value = row[width:]
                context_id = str(context_id)
                if row_namespace is None:
                    row_namespace = self._namespace_of(conn, context_id)
                plain = self._open(sealed.name, row_namespace, context_id, int(number), value)
                if self._sealing:
                    new = self._seal(sealed.name, row_namespace, context_id, int(number), plain)
                elif isinstance(plain, bytes) and sealed.name != "history.snapshot":
                    new = plain.decode("utf-8")
                else:
                    new = plain
                conn.execute(
                    f"UPDATE {sealed.table} SET {sealed.column} = ? WHERE "
                    + " AND ".join(f"{k} = ?" for k in sealed.key),
                    (new, *key_values),
                )
            return len(rows), tuple(rows[-1][:width])

    def _finish_rotation(self) -> bool:
        """Under the write lock: if no value is left under another key, forget the old key ids."""
        with self._write_transaction() as conn:
            for sealed in _SEALED_COLUMNS:
                condition, params = self._stale(sealed)
                if conn.execute(f"SELECT 1 FROM {sealed.table} WHERE {condition} LIMIT 1", params).fetchone():
                    return False
            current = self.cipher.key_id if self.cipher is not None else None
            conn.execute("DELETE FROM encryption_keys WHERE key_id IS NOT ?", (current,))
            self._note_key(conn)
        # Fold the WAL back: its frames may still hold the values as they were before.
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return True

    async def namespace_summary(self, namespace: str, prefix: str) -> tuple[int, int]:
        return await self._call(self._namespace_summary_sync, namespace, prefix)

    def _namespace_summary_sync(self, namespace: str, prefix: str) -> tuple[int, int]:
        bounds = (namespace, prefix, prefix + "~")
        count = self._db.execute(
            "SELECT count(*) FROM contexts WHERE namespace = ? AND deleted_at IS NULL AND name >= ? AND name < ?",
            bounds,
        ).fetchone()[0]
        last = self._db.execute(
            "SELECT sequence FROM changes WHERE namespace = ? AND name >= ? AND name < ?"
            " ORDER BY sequence DESC LIMIT 1",
            bounds,
        ).fetchone()
        return int(count), int(last[0]) if last else 0


def _statements(script: str) -> Iterator[str]:
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()
