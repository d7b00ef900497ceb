"""Export, import and key rotation, written once over the backend adapter.

Each reads and writes pages by primary key: export (``export_records``) and rotate-key
(``rotate_keys``) never hold more than a page, and every value passes through the
:class:`~groundhog_mcp.store.codec.RecordCodec` (opened for an export; sealed again, or written
as plaintext, under the current key by rotate-key and an import).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any, LiteralString, TypeVar

from groundhog_mcp.errors import StateUpdateError
from groundhog_mcp.models import JSONObject, utcnow
from groundhog_mcp.store.adapter import Tx, marks
from groundhog_mcp.store.base import RotationProgress
from groundhog_mcp.store.codec import SEALED_COLUMNS, SealedColumn, is_sealed
from groundhog_mcp.store.records import (
    EXPORT_KINDS,
    RecordKind,
    export_page,
    header_record,
    import_entries,
    import_rows,
)
from groundhog_mcp.store.text_index import TextIndex

__all__ = ["Maintenance", "RotationProgress"]

_T = TypeVar("_T")
_EXPORT_PAGE = 500


class Maintenance(TextIndex):
    """Export, import and rotate-key (see the module docstring)."""

    # -- export / import ------------------------------------------------------------------------

    async def export_records(self) -> AsyncGenerator[JSONObject]:
        """Every record, read in pages (in one snapshot where the backend has them)."""
        yield header_record()
        async with self._snapshot() as run:
            for kind in EXPORT_KINDS:
                after: tuple[Any, ...] | None = None
                while True:
                    page, after = await run(functools.partial(self._export_page, kind=kind, after=after))
                    if not page:
                        break
                    for record in page:
                        yield record

    def _sealed_of(self, table: str) -> list[SealedColumn]:
        return [c for c in SEALED_COLUMNS if c.table == table]

    async def _export_page(
        self, tx: Tx, *, kind: RecordKind, after: tuple[Any, ...] | None
    ) -> tuple[list[JSONObject], tuple[Any, ...] | None]:
        sealed_columns = self._sealed_of(kind.table)
        extras = "".join(", " + self._side(c.name) for c in sealed_columns)
        where: LiteralString = f" WHERE ({kind.order_by}) > ({marks(len(kind.key))})" if after is not None else ""
        rows = await tx.fetchall(
            f"SELECT {kind.select_list}{extras} FROM {kind.table}{where} ORDER BY {kind.order_by} LIMIT %s",
            (*(after or ()), _EXPORT_PAGE),
        )
        if not rows:
            return [], after
        columns = [f.select for f in kind.fields]
        width = len(columns)
        if kind.table == "contexts":
            self._namespaces.update((str(r[0]), str(r[1])) for r in rows)
        plain: list[tuple[Any, ...]] = []
        for row in rows:
            values = list(row[:width])
            for i, sealed in enumerate(sealed_columns):
                index = columns.index(sealed.column)
                value = row[width + i] if row[width + i] is not None else values[index]
                if value is None:
                    continue
                key = values[columns.index(sealed.context)]
                number = int(values[columns.index(sealed.number)])
                if sealed.namespace is not None:
                    namespace = str(values[columns.index(sealed.namespace)])
                else:  # only a sealed value's associated data needs it
                    namespace = await self._namespace_of(tx, key) if is_sealed(value) else ""
                values[index] = self.codec.open(sealed.name, namespace, key, number, value)
            plain.append(tuple(values))
        records = await self._compute(None, export_page, kind, plain)
        return records, kind.key_of(rows[-1])

    async def import_records(self, records: Iterable[JSONObject], *, actor: str = "local") -> int:
        rows = await self._compute(
            None, functools.partial(import_rows, identifier=_as_is, timestamp=_as_is), list(records)
        )

        async def work(tx: Tx) -> int:
            await self._import_bounds(tx, None)
            counts = await tx.fetchone("SELECT (SELECT count(*) FROM contexts), (SELECT count(*) FROM changes)")
            existing, changes = (int(counts[0]), int(counts[1])) if counts else (0, 0)
            if existing or changes:
                raise StateUpdateError(
                    f"import: the target database {self._where} is not empty ({existing} contexts, "
                    f"{changes} changes); import into {self._IMPORT_TARGET}"
                )
            namespaces = {str(row[0]): str(row[1]) for row in rows.rows["context"]}
            await self._note_key(tx)
            for kind, table_rows in rows.tables():
                insert, stored_rows = self._import_insert(kind, table_rows, namespaces)
                await tx.executemany(insert, stored_rows)
            last = await self._import_bounds(tx, rows)
            now = utcnow()
            for entry in import_entries(rows, actor=actor, last_sequence=last):
                await self._append_audit(tx, entry, now=now)
            return rows.contexts

        return await self._transaction(work, writing=True)

    @property
    def _where(self) -> str:
        raise NotImplementedError

    def _import_insert(
        self, kind: RecordKind, table_rows: list[tuple[Any, ...]], namespaces: dict[str, str]
    ) -> tuple[LiteralString, list[tuple[Any, ...]]]:
        """The insert of ``kind``, and its rows with their contents encoded by the codec."""
        sealed_columns = self._sealed_of(kind.table) if self.codec.sealing else []
        if not sealed_columns:
            return kind.insert("%s"), table_rows
        columns: list[LiteralString] = [c for f in kind.fields for c in f.columns]
        extras: list[LiteralString] = [self.SEALED_SIDE[c.name] for c in sealed_columns if c.name in self.SEALED_SIDE]
        out: list[tuple[Any, ...]] = []
        for row in table_rows:
            values = list(row)
            added: list[Any] = []
            for sealed in sealed_columns:
                index = columns.index(sealed.column)
                value = values[index]
                blob = None
                if value is not None:
                    key = str(values[columns.index(sealed.context)])
                    number = int(values[columns.index(sealed.number)])
                    namespace = (
                        str(values[columns.index(sealed.namespace)]) if sealed.namespace else namespaces.get(key, "")
                    )
                    blob = self.codec.seal(sealed.name, namespace, key, number, value)
                if sealed.name in self.SEALED_SIDE:
                    values[index] = None if blob is not None else value
                    added.append(blob)
                else:
                    values[index] = blob if blob is not None else value
            out.append((*values, *added))
        names = ", ".join([*columns, *extras])
        placeholders = ", ".join("%s" for _ in [*columns, *extras])
        return f"INSERT INTO {kind.table} ({names}) VALUES ({placeholders})", out

    # -- rotate-key -------------------------------------------------------------------------------

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
            pending = await self._transaction(self._rotation_pending, writing=False)
            if not any(pending.values()):
                if await self._forget_old_keys():
                    return True
                continue  # another process wrote under an old key meanwhile
            for sealed in SEALED_COLUMNS:
                if not pending[sealed.name]:
                    continue
                after: tuple[Any, ...] | None = None
                done = 0
                while True:
                    if max_batches is not None and batches >= max_batches:
                        return False
                    count, after = await self._transaction(
                        functools.partial(self._rotate_batch, sealed=sealed, after=after, batch_size=batch_size),
                        writing=True,
                    )
                    if after is None:
                        break
                    batches += 1
                    done += count
                    if progress is not None:
                        progress(RotationProgress(sealed.name, done, pending[sealed.name], batches))

    async def _rotation_pending(self, tx: Tx) -> dict[str, int]:
        pending: dict[str, int] = {}
        for sealed in SEALED_COLUMNS:
            condition, params = self._stale(sealed)
            row = await tx.fetchone(f"SELECT count(*) FROM {sealed.table} WHERE {condition}", params)
            pending[sealed.name] = int(row[0]) if row else 0
        return pending

    async def _rotate_batch(
        self, tx: Tx, *, sealed: SealedColumn, after: tuple[Any, ...] | None, batch_size: int
    ) -> tuple[int, tuple[Any, ...] | None]:
        """Rewrite up to ``batch_size`` stale values after key ``after`` (rows locked); returns how
        many and the last key (None when there were none left)."""
        condition, params = self._stale(sealed)
        keys = ", ".join(sealed.key)
        namespace: LiteralString = sealed.namespace or "NULL"
        where: LiteralString = f"({keys}) > ({', '.join('%s' for _ in sealed.key)}) AND " if after is not None else ""
        rows = await tx.fetchall(
            f"SELECT {keys}, {namespace}, {sealed.context}, {sealed.number}, {sealed.column},"
            f" {self._side(sealed.name)} FROM {sealed.table}"
            f" WHERE {where}{condition} ORDER BY {keys} LIMIT %s{self.FOR_UPDATE}",
            (*(after or ()), *params, batch_size),
        )
        if not rows:
            return 0, None
        await self._note_key(tx)
        width = len(sealed.key)
        updates: list[tuple[Any, ...]] = []
        for row in rows:
            row_namespace, context_id, number, plain, side = row[width:]
            if row_namespace is None:
                row_namespace = await self._namespace_of(tx, context_id)
            stored = side if side is not None else plain
            new = self.codec.reseal(sealed.name, row_namespace, context_id, int(number), stored)
            updates.append((*self._values(sealed.name, new), *row[:width]))
        match = " AND ".join(f"{k} = %s" for k in sealed.key)
        # Sealing a state takes its words out of the text index; opening one puts them back.
        states = [row[width + 1] for row in rows] if sealed.name == "contexts.state" else []
        await self._unindex_text(tx, states)
        await tx.executemany(
            f"UPDATE {sealed.table} SET {self._assign(sealed.name, sealed.column)} WHERE {match}", updates
        )
        await self._index_text(tx, states)
        return len(rows), tuple(rows[-1][:width])

    async def _forget_old_keys(self) -> bool:
        """Under the write lock: if no value is left under another key, forget the old key ids."""
        return await self._transaction(self._forget_old_keys_in, writing=True)

    async def _forget_old_keys_in(self, tx: Tx) -> bool:
        for sealed in SEALED_COLUMNS:
            condition, params = self._stale(sealed)
            if await tx.fetchone(f"SELECT 1 FROM {sealed.table} WHERE {condition} LIMIT 1", params) is not None:
                return False
        current = self.codec.key_id
        # No key id is "": without a current key every recorded id goes.
        await tx.execute("DELETE FROM encryption_keys WHERE key_id <> coalesce(%s, '')", (current,))
        await self._note_key(tx)
        return True


def _as_is(value: _T) -> _T:
    return value
