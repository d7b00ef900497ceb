"""Dead letters: events whose handling failed, kept with their payload and last error (sealed
when a key is configured) until replayed; written once over the backend adapter."""

from __future__ import annotations

import dataclasses
from typing import Any, LiteralString

from groundhog_mcp.models import dumps, utcnow
from groundhog_mcp.store.adapter import Row, StoreAdapter, Tx, marks
from groundhog_mcp.store.base import AuditEntry, AuditNote, DeadLetter
from groundhog_mcp.store.rows import DEAD_LETTER_COLUMNS, decode_dead_letter

__all__ = ["DeadLetters"]


class DeadLetters(StoreAdapter):
    """The dead-letter operations of :class:`~groundhog_mcp.store.base.Store`."""

    async def add_dead_letter(
        self, letter: DeadLetter, *, actor: str = "local", audit: AuditNote | None = None
    ) -> DeadLetter:
        codec = self.codec

        async def work(tx: Tx) -> DeadLetter:
            stored = letter
            if letter.id:
                error = codec.encode_text(
                    "dead_letters.last_error", letter.namespace, letter.context_id, letter.id, letter.last_error
                )
                await self._note_key(tx)
                await tx.execute(
                    f"UPDATE dead_letters SET attempts = attempts + %s,"
                    f" {self._assign('dead_letters.last_error', 'last_error')} WHERE id = %s",
                    (letter.attempts, *self._values("dead_letters.last_error", error), letter.id),
                )
            else:
                # A sealed letter's associated data names its id: taken before the insert.
                letter_id = await self._reserve_dead_letter_id(tx) if codec.sealing else None
                number = letter_id or 0
                payload = codec.encode_text(
                    "dead_letters.payload", letter.namespace, letter.context_id, number, dumps(letter.payload)
                )
                error = codec.encode_text(
                    "dead_letters.last_error", letter.namespace, letter.context_id, number, letter.last_error
                )
                await self._note_key(tx)
                new_id = await tx.insert(
                    f"INSERT INTO dead_letters ({'id, ' if letter_id else ''}namespace, context_id, name, type,"
                    f" {self._columns('dead_letters.payload', 'payload')}, idempotency_key, attempts,"
                    f" {self._columns('dead_letters.last_error', 'last_error')}, created_at)"
                    f" VALUES ({'%s, ' if letter_id else ''}%s, %s, %s, %s, "
                    f"{marks(self._values('dead_letters.payload', payload))}, %s, %s,"
                    f" {marks(self._values('dead_letters.last_error', error))}, %s)",
                    (
                        *((letter_id,) if letter_id else ()),
                        letter.namespace,
                        letter.context_id,
                        letter.name,
                        letter.type,
                        *self._values("dead_letters.payload", payload),
                        letter.idempotency_key,
                        letter.attempts,
                        *self._values("dead_letters.last_error", error),
                        letter.created_at,
                    ),
                    "id",
                )
                stored = dataclasses.replace(letter, id=new_id)
            await self._append_audit(tx, AuditEntry.of_dead_letter(stored, actor, audit))
            return stored

        return await self._transaction(work, writing=True)

    def _open_dead_letter(self, row: Row) -> DeadLetter:
        payload = row[12] if row[12] is not None else row[5]
        error = row[13] if row[13] is not None else row[8]
        ns, cid, number = row[1], row[2], int(row[0])
        return decode_dead_letter(
            row,
            self.codec.decode_text("dead_letters.payload", ns, cid, number, payload),
            self.codec.decode_text("dead_letters.last_error", ns, cid, number, error),
        )

    def _dead_letter_select(self) -> LiteralString:
        return (
            f"SELECT {DEAD_LETTER_COLUMNS}, {self._side('dead_letters.payload')},"
            f" {self._side('dead_letters.last_error')} FROM dead_letters"
        )

    async def list_dead_letters(
        self, namespace: str, *, name: str | None, after_id: int, limit: int, include_replayed: bool
    ) -> list[DeadLetter]:
        sql = self._dead_letter_select() + " WHERE namespace = %s AND id > %s"
        params: list[Any] = [namespace, after_id]
        if name is not None:
            sql += " AND name = %s"
            params.append(name)
        if not include_replayed:
            sql += " AND replayed_at IS NULL"
        rows = await self._transaction(
            lambda tx: tx.fetchall(sql + " ORDER BY id LIMIT %s", (*params, limit)), writing=False
        )
        return [self._open_dead_letter(r) for r in rows]

    async def get_dead_letter(self, namespace: str, letter_id: int) -> DeadLetter | None:
        sql = self._dead_letter_select() + " WHERE namespace = %s AND id = %s"
        row = await self._transaction(lambda tx: tx.fetchone(sql, (namespace, letter_id)), writing=False)
        return self._open_dead_letter(row) if row is not None else None

    async def dead_letter_name(self, namespace: str, letter_id: int) -> str | None:
        sql: LiteralString = "SELECT name FROM dead_letters WHERE namespace = %s AND id = %s"
        row = await self._transaction(lambda tx: tx.fetchone(sql, (namespace, letter_id)), writing=False)
        return str(row[0]) if row is not None else None

    async def mark_replayed(self, letter_id: int, revision: int) -> None:
        await self._transaction(
            lambda tx: tx.execute(
                "UPDATE dead_letters SET replayed_at = %s, replay_revision = %s WHERE id = %s",
                (utcnow(), revision, letter_id),
            ),
            writing=True,
        )
