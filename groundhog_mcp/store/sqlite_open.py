"""Opening a SQLite database file for the store (:mod:`groundhog_mcp.store.sqlite`), safely.

:func:`connect` refuses what it must not touch before it changes anything: another
application's file (never adopted), a damaged one (``PRAGMA quick_check``), one with a newer
schema, one whose records are sealed under a key the codec cannot open. Only then does it switch
the file to WAL, set ``synchronous`` and run the pending migrations, all in one transaction.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Final

import structlog

from groundhog_mcp.errors import InitializationError
from groundhog_mcp.models import format_timestamp, utcnow
from groundhog_mcp.store.codec import RecordCodec
from groundhog_mcp.store.migrations import LATEST_SCHEMA_VERSION, MIGRATIONS
from groundhog_mcp.store.sqlite_files import BUSY_CODES, create_database_file, primary_code, statements

__all__ = ["QUICK_CHECK_MAX_BYTES", "connect", "migrate", "schema_version", "sealing_key_ids"]

_log = structlog.get_logger("groundhog_mcp.store")
# Start-up runs PRAGMA quick_check on files up to this size (~1 s of reading at worst here).
QUICK_CHECK_MAX_BYTES: Final = 512 * 1024 * 1024


def connect(
    path: Path,
    *,
    busy_timeout_ms: int,
    synchronous: str,
    codec: RecordCodec,
    auto_migrate: bool,
) -> sqlite3.Connection:
    """A connection to ``path`` (created owner-only when missing), checked and migrated."""
    create_database_file(path)
    try:
        conn = sqlite3.connect(str(path), timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise InitializationError(f"database: cannot open {path}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # One read snapshot for both probes: another instance starting on the same new file may
        # commit its tables (all migrations in one transaction) between two separate reads, and
        # its tables without its schema_migrations row would look like another application's.
        conn.execute("BEGIN")
        try:
            version = schema_version(conn, path)
            if version == 0:
                refuse_foreign(conn, path)
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")
        if version != 0:
            check_pages(conn, path)
        if version > LATEST_SCHEMA_VERSION:
            raise InitializationError(
                f"database: {path} has schema version {version}, newer than this groundhog-mcp "
                f"supports ({LATEST_SCHEMA_VERSION}); upgrade groundhog-mcp. The file was not modified."
            )
        if auto_migrate:  # read-only: a wrong key leaves the file as it was
            codec.check_keys(sealing_key_ids(conn), str(path), "The file was not modified.")
        if codec.configured:
            # Freed pages and cells are zeroed, so replaced plaintext does not linger in the file.
            conn.execute("PRAGMA secure_delete=ON")
        enable_wal(conn, busy_timeout_ms)
        conn.execute(f"PRAGMA synchronous={synchronous}")
        if auto_migrate:
            migrate(conn, path)
    except InitializationError:
        conn.close()
        raise
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise InitializationError(
            f"database: {path} is not a usable groundhog-mcp SQLite database ({exc}){read_only_cause(path)}"
        ) from exc
    return conn


def read_only_cause(path: Path) -> str:
    """Why SQLite may have failed to open a file that is fine: it cannot write beside it."""
    directory = path.parent
    read_only_fs = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    if not read_only_fs and os.access(directory, os.W_OK):
        return ""
    where = "is on a read-only file system" if read_only_fs else "is in a directory this user cannot write"
    return (
        f": {directory} {where}, and SQLite's WAL mode must create {path.name}-wal and "
        f"{path.name}-shm beside the database. Serve it from a writable place (copy it, or "
        "use `groundhog-mcp backup` elsewhere first)"
    )


def check_pages(conn: sqlite3.Connection, path: Path) -> None:
    """``PRAGMA quick_check`` (read-only) on files up to QUICK_CHECK_MAX_BYTES: a damaged
    table page behind a valid header is refused at start-up, not met by a request later."""
    size = path.stat().st_size if path.exists() else 0
    if size > QUICK_CHECK_MAX_BYTES:
        _log.info("database.quick_check_skipped", path=str(path), size=size, limit=QUICK_CHECK_MAX_BYTES)
        return
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise InitializationError(
            f"database: {path} is corrupt (quick_check: {'; '.join(problems)[:300]}); the file was not "
            "modified. Restore it from a backup, or salvage it with `sqlite3 FILE .recover`"
        )


def schema_version(conn: sqlite3.Connection, path: Path) -> int:
    """Read-only probe; a corrupt or foreign file is an InitializationError naming ``path``."""
    try:
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_migrations'").fetchone()
        if not exists:
            return 0
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)
    except sqlite3.DatabaseError as exc:
        raise InitializationError(
            f"database: {path} is not a usable SQLite database ({exc}); the file was not modified"
            f"{read_only_cause(path)}"
        ) from exc


def refuse_foreign(conn: sqlite3.Connection, path: Path) -> None:
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
            f"database: {path} is another application's SQLite database (tables: {shown}); "
            "groundhog-mcp will not add its tables to it. Choose another file; this one was not modified."
        )


def enable_wal(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    # Several processes opening a fresh file at once can see "locked" here even with a
    # busy timeout (the switch needs an exclusive lock): retry within the timeout.
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if primary_code(exc) not in BUSY_CODES or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def migrate(conn: sqlite3.Connection, path: Path) -> list[int]:
    """Apply the pending migrations in one ``BEGIN IMMEDIATE`` transaction; their versions."""
    if schema_version(conn, path) >= LATEST_SCHEMA_VERSION:
        return []
    applied: list[int] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        current = schema_version(conn, path)  # re-read under the lock: another process may have won
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            for statement in statements(migration.sqlite):
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


def sealing_key_ids(conn: sqlite3.Connection) -> list[str]:
    """The ids of the keys records are sealed with (empty: plaintext, or no table yet)."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'encryption_keys'").fetchone()
    if not exists:
        return []
    return [row[0] for row in conn.execute("SELECT key_id FROM encryption_keys ORDER BY first_used, key_id")]
