"""Storage backends behind one :class:`Store` protocol."""

from pathlib import Path
from typing import Literal

from groundhog_mcp.errors import InitializationError
from groundhog_mcp.store.base import (
    AuditSigner,
    MaintenanceStore,
    RecordCipher,
    Retention,
    Store,
    StoredContext,
    StoreStatus,
)
from groundhog_mcp.store.core import StoreCore
from groundhog_mcp.store.search import parse_ref
from groundhog_mcp.store.sqlite import SQLiteStore

__all__ = [
    "MaintenanceStore",
    "RecordCipher",
    "Retention",
    "SQLiteStore",
    "Store",
    "StoreStatus",
    "StoredContext",
    "maintenance",
    "open_store",
]


def open_store(
    database: str | Path,
    *,
    busy_timeout_ms: int = 5000,
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL",
    auto_migrate: bool = True,
    retention: Retention | None = None,
    audit_signer: AuditSigner | None = None,
    cipher: RecordCipher | None = None,
    search_indexes: tuple[str, ...] = (),
    search_budget_ms: int = 2000,
) -> MaintenanceStore:
    """The backend for a ``--database`` value: a file path (SQLite) or a postgresql:// URL.

    A URL may name the PostgreSQL schema to use: ``postgresql://host/db?schema=groundhog``.
    ``busy_timeout_ms`` is the lock wait on both backends; ``synchronous`` is SQLite's only
    (PostgreSQL durability is the server's ``synchronous_commit``). ``audit_signer`` turns the
    audit log on: every write appends its signed row in its own transaction. ``cipher`` turns on
    encryption at rest (both backends). ``search_indexes`` are the JSON Pointers whose
    ``find`` conditions use an index (created at start); ``search_budget_ms`` bounds a ``find``.
    """
    text = str(database)
    if text.startswith(("postgresql://", "postgres://")):
        try:
            # Imported here: psycopg is the optional extra [postgres].
            from groundhog_mcp.store.postgres import PostgresStore
        except ImportError as exc:
            if not (exc.name or "").startswith("psycopg"):
                raise
            raise InitializationError(
                f"database: the PostgreSQL backend needs psycopg ({exc.name} is not installed); "
                "install groundhog-context-mcp[postgres]"
            ) from exc
        store: StoreCore = PostgresStore(
            text,
            busy_timeout_ms=busy_timeout_ms,
            auto_migrate=auto_migrate,
            retention=retention,
            audit_signer=audit_signer,
            cipher=cipher,
        )
    else:
        store = SQLiteStore(
            Path(text).expanduser(),
            busy_timeout_ms=busy_timeout_ms,
            synchronous=synchronous,
            auto_migrate=auto_migrate,
            retention=retention,
            audit_signer=audit_signer,
            cipher=cipher,
        )
    store.search_indexes = tuple(parse_ref(p, "search_indexes") for p in search_indexes)
    store.search_budget_ms = search_budget_ms
    return store


def maintenance(store: Store) -> MaintenanceStore:
    """``store`` as the maintenance commands use it (``export``, ``import``, ``backup``): every
    backend here is a :class:`MaintenanceStore`; the service only asks for a :class:`Store`."""
    if not isinstance(store, StoreCore):
        raise InitializationError(f"database: the {store.backend} backend has no maintenance commands")
    return store
