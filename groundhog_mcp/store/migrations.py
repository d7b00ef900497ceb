"""Numbered schema migrations, applied in order at start and recorded in ``schema_migrations``.

Append only: a released migration is never edited. Each entry carries the SQL per backend.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LATEST_SCHEMA_VERSION", "MIGRATIONS", "Migration"]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sqlite: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "contexts, history, change feed",
        sqlite="""
        CREATE TABLE contexts (
            id          TEXT PRIMARY KEY,
            namespace   TEXT NOT NULL,
            name        TEXT NOT NULL,
            version     TEXT NOT NULL,
            metadata    TEXT NOT NULL,
            settings    TEXT NOT NULL,
            schema      TEXT,
            handlers    TEXT NOT NULL,
            revision    INTEGER NOT NULL,
            state       TEXT NOT NULL,
            state_size  INTEGER NOT NULL,
            created_at  TEXT NOT NULL,
            updated_at  TEXT NOT NULL,
            deleted_at  TEXT
        );
        CREATE UNIQUE INDEX contexts_live_name ON contexts (namespace, name) WHERE deleted_at IS NULL;

        -- The highest revision ever given to a name, so a re-registered name never reuses one.
        CREATE TABLE name_revisions (
            namespace     TEXT NOT NULL,
            name          TEXT NOT NULL,
            last_revision INTEGER NOT NULL,
            PRIMARY KEY (namespace, name)
        ) WITHOUT ROWID;

        CREATE TABLE history (
            context_id  TEXT NOT NULL,
            revision    INTEGER NOT NULL,
            sequence    INTEGER NOT NULL,
            op          TEXT NOT NULL,
            actor       TEXT NOT NULL,
            timestamp   TEXT NOT NULL,
            size        INTEGER NOT NULL,
            snapshot    BLOB NOT NULL,
            PRIMARY KEY (context_id, revision)
        ) WITHOUT ROWID;

        -- AUTOINCREMENT: a sequence is never reused, even after rows are pruned.
        CREATE TABLE changes (
            sequence    INTEGER PRIMARY KEY AUTOINCREMENT,
            context_id  TEXT NOT NULL,
            namespace   TEXT NOT NULL,
            name        TEXT NOT NULL,
            revision    INTEGER NOT NULL,
            op          TEXT NOT NULL,
            actor       TEXT NOT NULL,
            timestamp   TEXT NOT NULL,
            patch       TEXT
        );
        """,
    ),
)

LATEST_SCHEMA_VERSION = MIGRATIONS[-1].version
