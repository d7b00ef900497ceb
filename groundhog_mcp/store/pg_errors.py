"""How PostgreSQL's errors reach callers: each one translated to the error a client can act on
(busy and retryable, missing tables, disk full, a standby), saying that nothing was written."""

from __future__ import annotations

import psycopg
from psycopg import errors

from groundhog_mcp.errors import ContextError, InitializationError, StateUpdateError, StoreBusyError
from groundhog_mcp.store.migrations import LATEST_SCHEMA_VERSION
from groundhog_mcp.store.pg_session import first_line

__all__ = ["newer_schema", "nothing", "translate"]


def translate(
    exc: psycopg.Error, writing: bool, location: str, busy_timeout_ms: int, statement_timeout_ms: int
) -> ContextError:
    """The error of a failed unit of work on the database at ``location``."""
    done = nothing(writing)
    if isinstance(exc, errors.LockNotAvailable):
        return StoreBusyError(
            f"database: locked by another writer for more than busy_timeout={busy_timeout_ms} ms; "
            f"{done}, retry the call"
        )
    if isinstance(exc, errors.QueryCanceled):
        return StoreBusyError(
            f"database: a statement ran longer than statement_timeout={statement_timeout_ms} ms; {done}, retry the call"
        )
    if isinstance(exc, errors.SerializationFailure | errors.DeadlockDetected):
        return StoreBusyError(f"database: {first_line(exc)}; {done}, retry the call")
    if isinstance(exc, errors.UndefinedTable):
        return InitializationError(
            f"database: the groundhog-mcp tables are missing at {location} (schema not migrated); "
            "run `groundhog-mcp db migrate`"
        )
    if isinstance(exc, errors.DiskFull):
        return StateUpdateError(
            f"database: disk full on the PostgreSQL server at {location}; {done}, the previous "
            "state is intact; free space and retry"
        )
    if isinstance(exc, errors.ReadOnlySqlTransaction):
        return StateUpdateError(
            f"database: PostgreSQL at {location} is read-only (a standby?); {done}; connect to the primary"
        )
    if isinstance(exc, psycopg.OperationalError):
        return StoreBusyError(
            f"database: PostgreSQL at {location} is unavailable ({first_line(exc)}); {done}, retry the call"
        )
    return StateUpdateError(f"database: {first_line(exc)}; {done}")


def newer_schema(location: str, version: int) -> InitializationError:
    """A database migrated by a newer groundhog-mcp: refused, never modified."""
    return InitializationError(
        f"database: {location} has schema version {version}, newer than this groundhog-mcp supports "
        f"({LATEST_SCHEMA_VERSION}); upgrade groundhog-mcp. The database was not modified."
    )


def nothing(writing: bool) -> str:
    """What a failed unit of work did not do."""
    return "nothing was written" if writing else "nothing was read"
