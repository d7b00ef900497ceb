"""Numbered schema migrations, applied in order at start and recorded in ``schema_migrations``.

Append only: a released migration is never edited. Each entry carries the SQL per backend:
``sqlite`` (run statement by statement) and ``postgres`` (one script, run in the migration
transaction with ``search_path`` set to the store's schema, so names stay unqualified).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import LiteralString

__all__ = ["AUDIT_CHAINS_SCHEMA", "LATEST_SCHEMA_VERSION", "MIGRATIONS", "Migration"]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sqlite: str
    postgres: LiteralString


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
        # JSON columns are `json`, not `jsonb`: `json` keeps the exact text (key order, number
        # spelling, "\u0000"), so both backends return what was stored. Names are COLLATE "C"
        # so list order and the prefix range scan are bytewise, as in SQLite.
        postgres="""
        CREATE TABLE contexts (
            id          UUID PRIMARY KEY,
            namespace   TEXT COLLATE "C" NOT NULL,
            name        TEXT COLLATE "C" NOT NULL,
            version     TEXT NOT NULL,
            metadata    JSON NOT NULL,
            settings    JSON NOT NULL,
            schema      JSON,
            handlers    JSON NOT NULL,
            revision    BIGINT NOT NULL,
            state       JSON NOT NULL,
            state_size  INTEGER NOT NULL,
            created_at  TIMESTAMPTZ NOT NULL,
            updated_at  TIMESTAMPTZ NOT NULL,
            deleted_at  TIMESTAMPTZ
        );
        CREATE UNIQUE INDEX contexts_live_name ON contexts (namespace, name) WHERE deleted_at IS NULL;

        -- The highest revision ever given to a name, so a re-registered name never reuses one.
        -- Its row is also the lock that serialises registrations of one name across instances.
        CREATE TABLE name_revisions (
            namespace     TEXT COLLATE "C" NOT NULL,
            name          TEXT COLLATE "C" NOT NULL,
            last_revision BIGINT NOT NULL,
            PRIMARY KEY (namespace, name)
        );

        CREATE TABLE history (
            context_id  UUID NOT NULL,
            revision    BIGINT NOT NULL,
            sequence    BIGINT NOT NULL,
            op          TEXT NOT NULL,
            actor       TEXT NOT NULL,
            timestamp   TIMESTAMPTZ NOT NULL,
            size        INTEGER NOT NULL,
            snapshot    BYTEA NOT NULL,
            PRIMARY KEY (context_id, revision)
        );
        -- Snapshots are zlib-compressed already: store them out of line without pglz.
        ALTER TABLE history ALTER COLUMN snapshot SET STORAGE EXTERNAL;

        CREATE TABLE changes (
            sequence    BIGINT PRIMARY KEY,
            context_id  UUID NOT NULL,
            namespace   TEXT COLLATE "C" NOT NULL,
            name        TEXT COLLATE "C" NOT NULL,
            revision    BIGINT NOT NULL,
            op          TEXT NOT NULL,
            actor       TEXT NOT NULL,
            timestamp   TIMESTAMPTZ NOT NULL,
            patch       JSON
        );

        -- The store-wide sequence. A counter row, not a PostgreSQL SEQUENCE: nextval() skips
        -- values on rollback and hands them out in an order other than commit order. The row
        -- lock is held to commit, so sequences are gap-free and committed in order.
        CREATE TABLE store_counter (
            name   TEXT PRIMARY KEY,
            value  BIGINT NOT NULL
        );
        INSERT INTO store_counter (name, value) VALUES ('sequence', 0);
        """,
    ),
    Migration(
        2,
        "events (idempotency), dead letters, per-context change index",
        sqlite="""
        CREATE TABLE events (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            context_id      TEXT NOT NULL,
            type            TEXT NOT NULL,
            payload         TEXT NOT NULL,
            idempotency_key TEXT,
            revision        INTEGER NOT NULL,
            sequence        INTEGER NOT NULL,
            created_at      TEXT NOT NULL
        );
        CREATE UNIQUE INDEX events_idempotency ON events (context_id, idempotency_key)
            WHERE idempotency_key IS NOT NULL;
        CREATE INDEX events_context ON events (context_id, id);

        CREATE TABLE dead_letters (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            namespace       TEXT NOT NULL,
            context_id      TEXT NOT NULL,
            name            TEXT NOT NULL,
            type            TEXT NOT NULL,
            payload         TEXT NOT NULL,
            idempotency_key TEXT,
            attempts        INTEGER NOT NULL,
            last_error      TEXT NOT NULL,
            created_at      TEXT NOT NULL,
            replayed_at     TEXT,
            replay_revision INTEGER
        );
        CREATE INDEX dead_letters_namespace ON dead_letters (namespace, id);
        CREATE INDEX changes_context ON changes (context_id, sequence);
        """,
        postgres="""
        CREATE TABLE events (
            id              BIGSERIAL PRIMARY KEY,
            context_id      UUID NOT NULL,
            type            TEXT NOT NULL,
            payload         TEXT NOT NULL,
            idempotency_key TEXT,
            revision        BIGINT NOT NULL,
            sequence        BIGINT NOT NULL,
            created_at      TIMESTAMPTZ NOT NULL
        );
        CREATE UNIQUE INDEX events_idempotency ON events (context_id, idempotency_key)
            WHERE idempotency_key IS NOT NULL;
        CREATE INDEX events_context ON events (context_id, id);

        CREATE TABLE dead_letters (
            id              BIGSERIAL PRIMARY KEY,
            namespace       TEXT NOT NULL,
            context_id      UUID NOT NULL,
            name            TEXT NOT NULL,
            type            TEXT NOT NULL,
            payload         TEXT NOT NULL,
            idempotency_key TEXT,
            attempts        INTEGER NOT NULL,
            last_error      TEXT NOT NULL,
            created_at      TIMESTAMPTZ NOT NULL,
            replayed_at     TIMESTAMPTZ,
            replay_revision BIGINT
        );
        CREATE INDEX dead_letters_namespace ON dead_letters (namespace, id);
        CREATE INDEX changes_context ON changes (context_id, sequence);
        """,
    ),
    Migration(
        3,
        "encryption at rest: ids of the keys records are sealed with",
        # One row per key id that sealed a record and may still have records under it; the
        # start-up check compares them with the configured keys (read-only), `rotate-key` deletes
        # the old ids once no record is left under them. Sealed values live in the existing
        # columns: SQLite stores a BLOB in a TEXT column as it is.
        sqlite="""
        CREATE TABLE encryption_keys (
            key_id      TEXT PRIMARY KEY,
            first_used  TEXT NOT NULL
        ) WITHOUT ROWID;
        """,
        postgres="""
        CREATE TABLE encryption_keys (
            key_id      TEXT PRIMARY KEY,
            first_used  TIMESTAMPTZ NOT NULL
        );
        """,
    ),
    Migration(
        4,
        "tamper-evident audit log",
        # One row per committed mutation and per denied request; never state contents. Rows are
        # chained by HMAC (groundhog_mcp.security.audit); the triggers make the table append-only.
        sqlite="""
        CREATE TABLE audit_log (
            sequence        INTEGER PRIMARY KEY,
            timestamp       TEXT NOT NULL,
            principal       TEXT NOT NULL,
            namespace       TEXT NOT NULL,
            operation       TEXT NOT NULL,
            outcome         TEXT NOT NULL,
            context         TEXT,
            context_id      TEXT,
            revision        INTEGER,
            change_sequence INTEGER,
            request_id      TEXT,
            detail          TEXT,
            key_id          TEXT NOT NULL,
            hmac            TEXT NOT NULL
        );
        CREATE INDEX audit_log_namespace ON audit_log (namespace, sequence);
        CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN
            SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE is not allowed');
        END;
        CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN
            SELECT RAISE(ABORT, 'audit_log is append-only: DELETE is not allowed');
        END;
        """,
        postgres="""
        CREATE TABLE audit_log (
            sequence        BIGINT PRIMARY KEY,
            timestamp       TIMESTAMPTZ NOT NULL,
            principal       TEXT NOT NULL,
            namespace       TEXT COLLATE "C" NOT NULL,
            operation       TEXT NOT NULL,
            outcome         TEXT NOT NULL,
            context         TEXT COLLATE "C",
            context_id      UUID,
            revision        BIGINT,
            change_sequence BIGINT,
            request_id      TEXT,
            detail          TEXT,
            key_id          TEXT NOT NULL,
            hmac            TEXT NOT NULL
        );
        CREATE INDEX audit_log_namespace ON audit_log (namespace, sequence);

        -- The chain head: the last row's sequence and HMAC. Its row lock orders the appends of
        -- every instance (taken with the store_counter lock by writes, alone by denials).
        CREATE TABLE audit_head (
            id        INTEGER PRIMARY KEY CHECK (id = 1),
            sequence  BIGINT NOT NULL,
            hmac      TEXT NOT NULL
        );
        INSERT INTO audit_head (id, sequence, hmac) VALUES (1, 0, '');

        CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP;
        END
        $$;
        CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
            FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
        CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
            FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
        """,
    ),
    Migration(
        5,
        "encryption at rest on PostgreSQL: bytea columns for sealed values",
        # PostgreSQL keeps state contents in json/text columns, which cannot hold a sealed blob: a
        # sealed value goes in its own nullable bytea column and the plaintext column is NULL
        # (history.snapshot is bytea already and holds either). Only catalog changes: no table
        # rewrite. SQLite stores a BLOB in a TEXT column as it is: nothing to do there.
        sqlite="",
        postgres="""
        ALTER TABLE contexts ALTER COLUMN state DROP NOT NULL;
        ALTER TABLE contexts ADD COLUMN state_sealed BYTEA;
        ALTER TABLE changes ADD COLUMN patch_sealed BYTEA;
        ALTER TABLE events ALTER COLUMN payload DROP NOT NULL;
        ALTER TABLE events ADD COLUMN payload_sealed BYTEA;
        ALTER TABLE dead_letters ALTER COLUMN payload DROP NOT NULL;
        ALTER TABLE dead_letters ALTER COLUMN last_error DROP NOT NULL;
        ALTER TABLE dead_letters ADD COLUMN payload_sealed BYTEA;
        ALTER TABLE dead_letters ADD COLUMN last_error_sealed BYTEA;
        """,
    ),
    Migration(
        6,
        "PostgreSQL: change sequence without a store-wide row lock",
        # The store_counter row was locked by every write in every namespace until its commit.
        # A SEQUENCE hands out numbers without a lock; they may commit out of order (and a
        # rollback leaves a gap), which the change feed's visibility horizon accounts for
        # (store/pg_feed.py). SQLite's single writer keeps its AUTOINCREMENT: nothing to do.
        sqlite="",
        postgres="""
        CREATE SEQUENCE change_sequence AS BIGINT MINVALUE 1;
        SELECT setval('change_sequence', greatest(value, 1), value > 0) FROM store_counter WHERE name = 'sequence';
        DROP TABLE store_counter;
        """,
    ),
    Migration(
        7,
        "branches and time: lineage of forks and merges, history by commit time",
        # One row per parent of a revision: the fork point of a context's first revision, or a
        # context revision that a merge into this one took as input. Merge bases are found from
        # these rows (service/lineage.py); `parent_name` is the parent's name when recorded.
        # history_time serves get_state(as_of) and get_history(since, until) by index seek.
        sqlite="""
        CREATE TABLE lineage (
            context_id      TEXT NOT NULL,
            revision        INTEGER NOT NULL,
            parent_id       TEXT NOT NULL,
            parent_revision INTEGER NOT NULL,
            namespace       TEXT NOT NULL,
            parent_name     TEXT NOT NULL,
            kind            TEXT NOT NULL,
            PRIMARY KEY (context_id, revision, parent_id)
        ) WITHOUT ROWID;
        CREATE INDEX history_time ON history (context_id, timestamp, revision);
        """,
        postgres="""
        CREATE TABLE lineage (
            context_id      UUID NOT NULL,
            revision        BIGINT NOT NULL,
            parent_id       UUID NOT NULL,
            parent_revision BIGINT NOT NULL,
            namespace       TEXT COLLATE "C" NOT NULL,
            parent_name     TEXT COLLATE "C" NOT NULL,
            kind            TEXT NOT NULL,
            PRIMARY KEY (context_id, revision, parent_id)
        );
        CREATE INDEX history_time ON history (context_id, timestamp, revision);
        """,
    ),
    Migration(
        8,
        "leases with fencing tokens, context expiry",
        # One row per context that was ever leased: the last fencing token issued (kept after a
        # release, so tokens only grow) and, while held, holder and expiry (groundhog_mcp/store/leases.py).
        # contexts.expires_at: when a context expires (its settings' expires_at, or its last write
        # plus expire_after_idle_seconds, whichever is first); an expired context reads as missing
        # (groundhog_mcp/store/expiry.py).
        sqlite="""
        ALTER TABLE contexts ADD COLUMN expires_at TEXT;
        CREATE INDEX contexts_expiry ON contexts (expires_at) WHERE expires_at IS NOT NULL AND deleted_at IS NULL;
        CREATE TABLE leases (
            context_id  TEXT PRIMARY KEY,
            token       INTEGER NOT NULL,
            holder      TEXT,
            expires_at  TEXT,
            updated_at  TEXT NOT NULL
        ) WITHOUT ROWID;
        """,
        postgres="""
        ALTER TABLE contexts ADD COLUMN expires_at TIMESTAMPTZ;
        CREATE INDEX contexts_expiry ON contexts (expires_at) WHERE expires_at IS NOT NULL AND deleted_at IS NULL;
        CREATE TABLE leases (
            context_id  UUID PRIMARY KEY,
            token       BIGINT NOT NULL,
            holder      TEXT,
            expires_at  TIMESTAMPTZ,
            updated_at  TIMESTAMPTZ NOT NULL
        );
        """,
    ),
    Migration(
        9,
        "search: text of the data of live states (FTS5 / GIN), jsonb containment index on PostgreSQL",
        # The text searched is the string values of a state's data. SQLite keeps it in an FTS5
        # table (rowid = the context row's rowid) that triggers keep in step with every write in
        # the write's own transaction; a sealed state (a BLOB) is never indexed, and sealing a
        # state (rotate-key) drops its text. PostgreSQL indexes the same text by expression: a
        # sealed row's state is NULL there. Contentless (the words only, no copy of the text;
        # a row's words are removed by giving them again, from the old state) and detail=none
        # (no positions): the smallest FTS5 index.
        sqlite="""
        CREATE VIRTUAL TABLE context_text USING fts5(body, content='', detail=none);
        INSERT INTO context_text (rowid, body)
            SELECT rowid, (SELECT group_concat(value, ' ') FROM json_tree(contexts.state, '$.data') WHERE type = 'text')
            FROM contexts WHERE typeof(state) = 'text';
        CREATE TRIGGER context_text_insert AFTER INSERT ON contexts WHEN typeof(new.state) = 'text'
        BEGIN
            INSERT INTO context_text (rowid, body) VALUES
                (new.rowid, (SELECT group_concat(value, ' ') FROM json_tree(new.state, '$.data') WHERE type = 'text'));
        END;
        CREATE TRIGGER context_text_update AFTER UPDATE OF state ON contexts
        BEGIN
            INSERT INTO context_text (context_text, rowid, body)
                SELECT 'delete', old.rowid,
                    (SELECT group_concat(value, ' ') FROM json_tree(old.state, '$.data') WHERE type = 'text')
                WHERE typeof(old.state) = 'text';
            INSERT INTO context_text (rowid, body)
                SELECT new.rowid,
                    (SELECT group_concat(value, ' ') FROM json_tree(new.state, '$.data') WHERE type = 'text')
                WHERE typeof(new.state) = 'text';
        END;
        CREATE TRIGGER context_text_delete AFTER DELETE ON contexts WHEN typeof(old.state) = 'text'
        BEGIN
            INSERT INTO context_text (context_text, rowid, body) VALUES
                ('delete', old.rowid,
                 (SELECT group_concat(value, ' ') FROM json_tree(old.state, '$.data') WHERE type = 'text'));
        END;
        """,
        # json keeps "\u0000", which jsonb refuses: search_jsonb reads it as U+FFFD (searches
        # only; the state is stored and returned exactly), so no state can fail an index.
        postgres="""
        CREATE FUNCTION search_jsonb(value json) RETURNS jsonb
            LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
            AS $$ SELECT replace(value::text, '\\u0000', '\\ufffd')::jsonb $$;
        CREATE INDEX contexts_text ON contexts
            USING GIN (jsonb_to_tsvector('simple'::regconfig, (search_jsonb(state) -> 'data'), '["string"]'::jsonb))
            WHERE deleted_at IS NULL;
        CREATE INDEX contexts_data ON contexts USING GIN ((search_jsonb(state) -> 'data') jsonb_path_ops)
            WHERE deleted_at IS NULL;
        """,
    ),
    Migration(
        10,
        "audit log: one HMAC chain per namespace",
        # Every new audit row goes to its namespace's chain ("" is the store-wide chain) and
        # carries its position there; its HMAC covers the position and chains to the previous
        # row of that chain (security/audit.py). Rows written before this migration keep
        # position NULL: they stay one legacy chain over every namespace, verified as before,
        # and audit_legacy records where it ends (a cut of its tail is then noticed). On
        # PostgreSQL a write locks its namespace's audit_heads row instead of the one
        # audit_head row every audited write took; the log's sequence comes from a SEQUENCE.
        # SQLite takes a chain's head from its last row (index audit_log_chain).
        sqlite="""
        ALTER TABLE audit_log ADD COLUMN position INTEGER;
        CREATE UNIQUE INDEX audit_log_chain ON audit_log (namespace, position) WHERE position IS NOT NULL;
        CREATE TABLE audit_legacy (sequence INTEGER NOT NULL, hmac TEXT NOT NULL);
        INSERT INTO audit_legacy (sequence, hmac) SELECT sequence, hmac FROM audit_log ORDER BY sequence DESC LIMIT 1;
        """,
        postgres="""
        ALTER TABLE audit_log ADD COLUMN position BIGINT;
        CREATE UNIQUE INDEX audit_log_chain ON audit_log (namespace, position) WHERE position IS NOT NULL;
        CREATE TABLE audit_legacy (sequence BIGINT NOT NULL, hmac TEXT NOT NULL);
        INSERT INTO audit_legacy (sequence, hmac) SELECT sequence, hmac FROM audit_log ORDER BY sequence DESC LIMIT 1;
        CREATE TABLE audit_heads (
            namespace TEXT COLLATE "C" PRIMARY KEY,
            position  BIGINT NOT NULL,
            hmac      TEXT NOT NULL
        );
        CREATE SEQUENCE audit_sequence AS BIGINT MINVALUE 1;
        SELECT setval('audit_sequence', greatest(sequence, 1), sequence > 0) FROM audit_head;
        DROP TABLE audit_head;
        """,
    ),
    Migration(
        11,
        "lease waiting line: first come, first served across processes and instances",
        # One row per agent waiting for a context's lease (groundhog_mcp/store/leases.py). The id
        # is its place in line: given under the context's lock, so it grows in the order the
        # waiters came, on every process and instance. ``alive_until`` is its heartbeat deadline,
        # never after the end of its wait: a waiter that stopped waiting (gave up, or its process
        # died) is skipped once it passes, and its row is deleted by the next use of the line.
        sqlite="""
        CREATE TABLE lease_waiters (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            context_id  TEXT NOT NULL,
            namespace   TEXT NOT NULL,
            holder      TEXT NOT NULL,
            alive_until TEXT NOT NULL
        );
        CREATE INDEX lease_waiters_line ON lease_waiters (context_id, id);
        CREATE INDEX lease_waiters_namespace ON lease_waiters (namespace, alive_until);
        """,
        postgres="""
        CREATE TABLE lease_waiters (
            id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            context_id  UUID NOT NULL,
            namespace   TEXT COLLATE "C" NOT NULL,
            holder      TEXT NOT NULL,
            alive_until TIMESTAMPTZ NOT NULL
        );
        CREATE INDEX lease_waiters_line ON lease_waiters (context_id, id);
        CREATE INDEX lease_waiters_namespace ON lease_waiters (namespace, alive_until);
        """,
    ),
    Migration(
        12,
        "text index: the store core indexes an update's words, and only when they may have changed",
        # The update trigger of schema 9 walked the old and the new state's data on every update
        # of a state; most updates change numbers or flags and leave the words as they were. The
        # store core now does the same two statements around its UPDATE, and skips them when the
        # update's patch cannot have changed a string of the data (groundhog_mcp/store/text_index.py).
        # The index's content stays what it was. Inserts and deletes keep their triggers.
        # PostgreSQL indexes the text by expression: nothing changes there.
        sqlite="""
        DROP TRIGGER context_text_update;
        """,
        postgres="SELECT 1;",
    ),
)

# The schema from which the audit log has one chain per namespace (audit commands need it).
AUDIT_CHAINS_SCHEMA = 10

LATEST_SCHEMA_VERSION = MIGRATIONS[-1].version
