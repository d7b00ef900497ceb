"""Storage backends behind one :class:`Store` protocol."""

from pathlib import Path
from typing import Literal

from groundhog_mcp.errors import InitializationError
from groundhog_mcp.store.base import Store, StoredContext, StoreStatus
from groundhog_mcp.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store", "StoreStatus", "StoredContext", "open_store"]


def open_store(
    database: str | Path,
    *,
    busy_timeout_ms: int = 5000,
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL",
    auto_migrate: bool = True,
) -> Store:
    """The backend for a ``--database`` value: a file path (SQLite) or a postgresql:// URL."""
    text = str(database)
    if text.startswith(("postgresql://", "postgres://")):
        raise InitializationError(
            "database: the PostgreSQL backend is not available in this version; use a SQLite file path"
        )
    return SQLiteStore(
        Path(text).expanduser(),
        busy_timeout_ms=busy_timeout_ms,
        synchronous=synchronous,
        auto_migrate=auto_migrate,
    )
