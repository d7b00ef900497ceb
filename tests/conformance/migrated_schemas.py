"""Migrated PostgreSQL schemas handed out again instead of made anew for every test.

Creating a schema and running every migration in it, then dropping it, is most of what a
PostgreSQL test costs the server (~0.1 s; several times that on a loaded machine): ~40 relations
created and unlinked per test. A test whose first step opens a store on its fresh schema (the
``store``, ``manager`` and ``other`` fixtures) would find the same thing in a schema another test
used, once that schema's rows are put back as migrations left them. So, per test process:

- one *template* schema, migrated by the store itself, that no test touches;
- at a test's end, each schema it asked for migrated gets its rows put back as the template's
  (every table emptied, the template's rows copied in, every sequence set to the template's
  value) and waits for the next test, if its definition is exactly the template's: tables,
  columns, indexes, constraints, triggers, functions, sequences and privileges compared once,
  when the schema first joins (the test's store migrated it); after that, a stamp of every
  catalog row of the schema (count and transaction ids) shows any DDL a later test ran on it.
  Any other (altered, or its reset failed) is dropped as before;
- :meth:`MigratedSchemas.take` hands one out, or ``None`` (then the caller makes a fresh one).

Only in the private database of the test process (tests/conftest.py), which is dropped whole at
the end of the session: nothing kept here outlives the run. Tests that look at an empty schema
(migration, status of a database not migrated yet) never get one: they do not ask.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, LiteralString
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from groundhog_mcp.store import open_store

__all__ = ["MigratedSchemas", "migrated_schemas"]

PRIVATE_DATABASE_VARIABLE = "GROUNDHOG_TEST_PRIVATE_DATABASE"  # set by tests/conftest.py

# One line per object of schema %(schema)s, its name written as 'S': equal lines, equal schemas.
_DEFINITION: LiteralString = """
WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s)
SELECT coalesce(string_agg(replace(line, quote_ident(%(schema)s) || '.', 'S.'), E'\\n' ORDER BY line), '')
FROM (
    SELECT concat_ws(' ', 'rel', c.relname, c.relkind, c.relpersistence, c.relrowsecurity,
                     c.reloptions::text, c.relacl::text) AS line
    FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM ns)
    UNION ALL
    SELECT concat_ws(' ', 'col', c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
                     a.attnotnull, a.attisdropped, a.attidentity, a.attgenerated, a.attcollation,
                     pg_get_expr(d.adbin, d.adrelid), a.attacl::text)
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE c.relnamespace = (SELECT oid FROM ns) AND a.attnum > 0
    UNION ALL
    SELECT concat_ws(' ', 'idx', pg_get_indexdef(i.indexrelid)) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
    WHERE c.relnamespace = (SELECT oid FROM ns)
    UNION ALL
    SELECT concat_ws(' ', 'con', c.relname, k.conname, pg_get_constraintdef(k.oid))
    FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid WHERE c.relnamespace = (SELECT oid FROM ns)
    UNION ALL
    SELECT concat_ws(' ', 'trg', pg_get_triggerdef(t.oid), t.tgenabled)
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = (SELECT oid FROM ns)
    UNION ALL
    SELECT concat_ws(' ', 'fn', pg_get_functiondef(p.oid), p.proacl::text)
    FROM pg_proc p WHERE p.pronamespace = (SELECT oid FROM ns)
    UNION ALL
    SELECT concat_ws(' ', 'pol', c.relname, po.polname, po.polcmd, pg_get_expr(po.polqual, po.polrelid))
    FROM pg_policy po JOIN pg_class c ON c.oid = po.polrelid WHERE c.relnamespace = (SELECT oid FROM ns)
    UNION ALL
    SELECT concat_ws(' ', 'seq', s.seqrelid::regclass::text, s.seqtypid, s.seqstart, s.seqincrement,
                     s.seqmin, s.seqmax, s.seqcycle)
    FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid WHERE c.relnamespace = (SELECT oid FROM ns)
    UNION ALL
    SELECT concat_ws(' ', 'nsp', n.nspacl::text) FROM pg_namespace n WHERE n.oid = (SELECT oid FROM ns)
) AS lines
"""


# Count and transaction ids of every catalog row describing schema %(schema)s: any CREATE, ALTER,
# DROP, GRANT or TRUNCATE in it writes a row with a new xmin or changes a count.
_STAMP: LiteralString = """
WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s),
rel AS (SELECT oid, xmin FROM pg_class WHERE relnamespace = (SELECT oid FROM ns))
SELECT concat_ws(' ',
    (SELECT count(*) || ':' || sum(xmin::text::bigint) FROM rel),
    (SELECT count(*) || ':' || sum(xmin::text::bigint) FROM pg_attribute WHERE attrelid IN (SELECT oid FROM rel)),
    (SELECT count(*) || ':' || sum(xmin::text::bigint) FROM pg_attrdef WHERE adrelid IN (SELECT oid FROM rel)),
    (SELECT count(*) || ':' || sum(xmin::text::bigint) FROM pg_index WHERE indrelid IN (SELECT oid FROM rel)),
    (SELECT count(*) || ':' || sum(xmin::text::bigint) FROM pg_constraint WHERE connamespace = (SELECT oid FROM ns)),
    (SELECT count(*) || ':' || sum(xmin::text::bigint) FROM pg_trigger WHERE tgrelid IN (SELECT oid FROM rel)),
    (SELECT count(*) || ':' || sum(xmin::text::bigint) FROM pg_policy WHERE polrelid IN (SELECT oid FROM rel)),
    (SELECT count(*) || ':' || sum(xmin::text::bigint) FROM pg_proc WHERE pronamespace = (SELECT oid FROM ns)),
    (SELECT count(*) || ':' || sum(xmin::text::bigint) FROM pg_sequence WHERE seqrelid IN (SELECT oid FROM rel)),
    (SELECT xmin::text FROM pg_namespace WHERE oid = (SELECT oid FROM ns)))
"""


class MigratedSchemas:
    """The template and the schemas waiting for reuse, in one test process's private database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.template: str | None = None
        self._definition = ""
        self._tables: list[tuple[str, list[str]]] = []  # (table, columns to copy: empty if no template rows)
        self._sequences: list[str] = []
        self._free: list[tuple[str, str]] = []  # (schema, its stamp)
        self._out: dict[str, str] = {}  # handed out from _free: schema -> its stamp then

    async def take(self) -> str | None:
        """A migrated schema holding what migrations leave, or None when none is waiting."""
        if self.template is None:
            await self._make_template()
        if not self._free:
            return None
        schema, stamp = self._free.pop()
        self._out[schema] = stamp
        return schema

    async def give_back(self, conn: psycopg.AsyncConnection[Any], schema: str) -> bool:
        """Put ``schema`` (asked for migrated) back as migrations left it and keep it; False
        (nothing done) if its definition is not the template's or its reset failed: the caller
        drops it."""
        if self.template is None:
            return False
        stamp = await self._stamp(conn, schema)
        if schema in self._out:
            if self._out.pop(schema) != stamp:
                return False
        elif await self._define(conn, schema) != self._definition:
            return False
        try:
            async with conn.transaction():
                await conn.execute(self._reset(schema))
        except psycopg.Error:
            return False
        self._free.append((schema, stamp))
        return True

    async def _stamp(self, conn: psycopg.AsyncConnection[Any], schema: str) -> str:
        cur = await conn.execute(_STAMP, {"schema": schema})
        row = await cur.fetchone()
        return str(row[0]) if row else ""

    async def _define(self, conn: psycopg.AsyncConnection[Any], schema: str) -> str:
        cur = await conn.execute(_DEFINITION, {"schema": schema})
        row = await cur.fetchone()
        return str(row[0]) if row else ""

    async def _make_template(self) -> None:
        template = f"gh_template_{uuid.uuid4().hex[:12]}"
        store = open_store(f"{self.url}?schema={template}")
        await store.migrate()  # the store's own migrations, as a test's first open runs them
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            self._definition = await self._define(conn, template)
            cur = await conn.execute(
                "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind IN ('r', 'S') ORDER BY c.relname",
                (template,),
            )
            for name, kind in await cur.fetchall():
                if kind == "S":
                    self._sequences.append(name)
                    continue
                rows = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(template, name)))
                filled = ((await rows.fetchone()) or (0,))[0]
                self._tables.append((name, await self._insertable_columns(conn, template, name) if filled else []))
        self.template = template

    def _reset(self, schema: str) -> sql.Composed:
        """Every table emptied, the template's rows copied in, every sequence at the template's value."""
        assert self.template is not None
        statements: list[sql.Composable] = [
            # Past the append-only triggers of audit_log, which refuse a DELETE.
            sql.SQL("SET LOCAL session_replication_role = replica"),
            sql.SQL("SET LOCAL lock_timeout = '5s'"),
        ]
        for table, columns in self._tables:
            statements.append(sql.SQL("DELETE FROM {}").format(sql.Identifier(schema, table)))
            if columns:
                names = sql.SQL(", ").join(map(sql.Identifier, columns))
                statements.append(
                    sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {}").format(
                        sql.Identifier(schema, table), names, names, sql.Identifier(self.template, table)
                    )
                )
        for sequence in self._sequences:
            mine = sql.Literal(sql.Identifier(schema, sequence).as_string(None))
            statements.append(
                sql.SQL("SELECT setval({}::regclass, last_value, is_called) FROM {}").format(
                    mine, sql.Identifier(self.template, sequence)
                )
            )
        return sql.SQL("; ").join(statements)

    async def _insertable_columns(self, conn: psycopg.AsyncConnection[Any], schema: str, table: str) -> list[str]:
        cur = await conn.execute(
            "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s"
            " AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
            (schema, table),
        )
        return [str(r[0]) for r in await cur.fetchall()]


_instance: MigratedSchemas | None = None


def migrated_schemas(url: str) -> MigratedSchemas | None:
    """This test process's pool, or None outside a private database (a shared one keeps nothing)."""
    global _instance
    private = os.environ.get(PRIVATE_DATABASE_VARIABLE)
    if not private or urlsplit(url).path != f"/{private}":
        return None
    if _instance is None or _instance.url != url:
        _instance = MigratedSchemas(url)
    return _instance
