"""What the SQLite backend does with files and SQLite's result codes, beside the store itself
(:mod:`groundhog_mcp.store.sqlite`): creating a database file owner-only, writing a backup into
a new private file, classifying SQLite errors by result code, splitting a migration script."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import structlog

from groundhog_mcp.errors import InitializationError, StateUpdateError
from groundhog_mcp.files import PrivateOutput, create_private, loose_mode, make_private_dirs

__all__ = ["BUSY_CODES", "CORRUPT_CODES", "backup_into", "create_database_file", "primary_code", "statements"]

_log = structlog.get_logger("groundhog_mcp.store")

# SQLite primary result codes (https://sqlite.org/rescode.html) the store translates.
BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def primary_code(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code of an error (the low byte of the extended code Python
    reports), or None for an error the sqlite3 module raised itself (no code)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def create_database_file(path: Path) -> None:
    """A new database file is created owner-only (0600) before SQLite opens it: SQLite gives
    ``-wal`` and ``-shm`` the database file's mode, so they are 0600 too, whatever the umask.
    An existing file keeps its mode (it is the user's file): a readable one is warned about."""
    try:
        if not path.exists():
            make_private_dirs(path.parent)
            create_private(path)
            return
    except OSError as exc:
        raise InitializationError(
            f"database: cannot create {path}: {exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else "")
            + "; nothing was written"
        ) from None
    for each in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        mode = loose_mode(each)
        if mode is not None:
            _log.warning(
                "database.readable_by_others",
                path=str(each),
                mode=f"{mode:o}",
                hint="chmod 600 it (new -wal and -shm files take the database file's mode)",
            )


def backup_into(source: sqlite3.Connection, destination: Path, force: bool) -> None:
    """SQLite's online backup of ``source`` into a new 0600 file beside ``destination``, moved
    into place when complete; an existing ``destination`` only with ``force``."""
    for suffix in ("-wal", "-journal"):
        companion = destination.with_name(destination.name + suffix)
        if force and companion.exists():
            # Replacing only the main file would let SQLite apply that journal to the copy.
            raise StateUpdateError(
                f"backup: {companion} exists: {destination} looks like a database in use; it is not replaced "
                "(choose another file name). Nothing was written."
            )
    with PrivateOutput(destination, force=force, what="backup") as aside:
        target = sqlite3.connect(str(aside))
        try:
            source.backup(target)
        finally:
            target.close()


def statements(script: str) -> Iterator[str]:
    """A migration script's statements, one at a time (``executescript`` would commit)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()
