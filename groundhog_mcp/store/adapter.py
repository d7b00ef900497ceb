"""What a backend provides the store core, and the helpers the core's parts share.

A backend (:mod:`~groundhog_mcp.store.sqlite`, :mod:`~groundhog_mcp.store.postgres`) subclasses
:class:`~groundhog_mcp.store.core.StoreCore` and fills in :class:`StoreAdapter`'s hooks: it runs
a unit of work in one transaction (:meth:`StoreAdapter._transaction`), executes SQL with
``%s`` placeholders on its connection (:class:`Tx`), translates its errors, and writes the few
statements whose SQL differs (locks, sequences, the audit chain head, notifications).

Units of work are coroutines. PostgreSQL awaits them on the event loop; SQLite drives them to
the end on its own thread in one step (:func:`drive`): its :class:`Tx` never suspends, so a
write still costs one thread hop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, LiteralString, Protocol, TypeVar

from groundhog_mcp.models import Change, ContextId, utcnow
from groundhog_mcp.store.base import (
    AuditEntry,
    AuditRecord,
    AuditSigner,
    EventRecord,
    RecordCipher,
    Retention,
    StoreStatus,
)
from groundhog_mcp.store.codec import RecordCodec, SealedColumn
from groundhog_mcp.store.records import ImportRows
from groundhog_mcp.store.rows import CONTEXT_COLUMNS, StoredContext, decode_context

__all__ = [
    "AuditHead",
    "ChangeWrite",
    "Params",
    "Reservation",
    "Row",
    "Runner",
    "StoreAdapter",
    "Tx",
    "drive",
    "marks",
]

_T = TypeVar("_T")
Row = tuple[Any, ...]
Params = Sequence[Any] | Mapping[str, Any]
Runner = Callable[[Callable[["Tx"], Awaitable[Any]]], Awaitable[Any]]
"""Runs a unit of work in a backend's transaction (``_snapshot``: all in one snapshot)."""
AuditHead = tuple[int, int, str]
"""Where the next audit row of a chain goes: its log sequence, its position in its namespace's
chain, and the HMAC of the chain's row before it ("" before the first)."""


class Tx(Protocol):
    """One open transaction of a backend. SQL uses ``%s`` placeholders; ids may be passed as
    ``UUID`` and times as ``datetime`` (SQLite stores them as text)."""

    async def execute(self, sql: LiteralString, params: Params = ()) -> None: ...

    async def executemany(self, sql: LiteralString, rows: Sequence[Sequence[Any]]) -> None: ...

    async def fetchone(self, sql: LiteralString, params: Params = ()) -> Row | None: ...

    async def fetchall(self, sql: LiteralString, params: Params = ()) -> list[Row]: ...

    async def insert(self, sql: LiteralString, params: Params, key: LiteralString) -> int:
        """Run an ``INSERT`` of one row; its generated ``key`` (SQLite: the rowid, without
        ``RETURNING``, which SQLite before 3.35 lacks)."""
        ...


def drive(work: Awaitable[_T]) -> _T:
    """Run a unit of work that never suspends (SQLite's) to its end, synchronously."""
    steps = work.__await__()
    try:
        next(steps)
    except StopIteration as done:
        return done.value
    raise RuntimeError("a synchronous transaction awaited something that suspends")  # pragma: no cover


@dataclasses.dataclass(frozen=True)
class EncodedState:
    """A new state as stored: the state column value, its size, and its history snapshot."""

    state: str | bytes
    size: int
    snapshot: bytes


@dataclasses.dataclass
class Reservation:
    """What a change of a locked context will need from the database, taken ahead of its rows by
    a backend that can (PostgreSQL: with the read of the locked row, so that the change's rows,
    its audit row and ``COMMIT`` travel together). Nothing is reserved unless the live row is
    context ``context_id`` at ``revision`` (None: any) and its lease admits ``lease_token``:
    a write that will fail takes no number. Empty (``sequence`` None): the backend takes what
    it needs when it writes the change (:meth:`StoreAdapter._append_change`)."""

    context_id: ContextId | None
    revision: int | None
    lease_token: int | None
    sequence: int | None = None
    head: AuditHead | None = None


@dataclasses.dataclass(frozen=True)
class ChangeWrite:
    """The rows of one committed change, contents already encoded: the change row, the history
    snapshot (with a state) and the event record (with an event)."""

    context_id: ContextId
    namespace: str
    name: str
    revision: int
    op: str
    actor: str
    now: datetime
    patch: str | bytes | None
    snapshot: bytes | None
    size: int | None
    event: EventRecord | None
    payload: str | bytes | None
    reserved: Reservation | None = None


class StoreAdapter:
    """The hooks a backend fills in, and the content-column helpers every part of the core uses."""

    backend: str
    # The content columns this backend stores sealed values in a column of their own (PostgreSQL:
    # json/text beside bytea); the others hold either form in place.
    SEALED_SIDE: dict[str, LiteralString] = {}
    FOR_UPDATE: LiteralString = ""
    # A statement that waited for a row lock still reads other tables as of its start (PostgreSQL's
    # READ COMMITTED: only the locked row is re-read): the context row is locked by a statement of
    # its own, and its lease and waiting line are read by the next one, once the lock is held
    # (Leasing._wait_for_lock). SQLite's write lock is taken before anything is read.
    REREAD_AFTER_LOCK = False
    # The current time in SQL, comparable with a stored timestamp (contexts.expires_at).
    NOW: LiteralString = "CURRENT_TIMESTAMP"
    # States up to this size are decoded where the unit of work runs; larger ones via _compute.
    INLINE_BYTES = 64 * 1024
    # A backend whose units of work run on its one database thread (SQLite) runs a mutation there
    # only when the caller says it is cheap (``mutate(inline=...)``) and the state is at most
    # PREPARE_ABOVE_BYTES; any other before the write transaction, in a worker thread. Others
    # run it in the transaction, in a thread unless it is cheap (_compute).
    PREPARES = False
    PREPARE_ABOVE_BYTES = 64 * 1024
    _IMPORT_TARGET = "a new, empty database"

    def __init__(
        self, *, retention: Retention | None, audit_signer: AuditSigner | None, cipher: RecordCipher | None
    ) -> None:
        self.retention = retention or Retention()
        self.audit_signer = audit_signer
        self.cipher = cipher  # as configured; only the codec uses it
        self.codec = RecordCodec(cipher)
        self._namespaces: dict[str, str] = {}  # context id -> namespace (never changes): history/event AAD
        self._context_select: LiteralString = f"{CONTEXT_COLUMNS}, {self._side('contexts.state')}"
        side = self.SEALED_SIDE.get("contexts.state")
        self._state_side: LiteralString = f", {side}" if side else ""
        # A live context: not unregistered, not expired (an expired one reads as missing).
        self._live: LiteralString = f"deleted_at IS NULL AND (expires_at IS NULL OR expires_at > {self.NOW})"
        self._live_row: LiteralString = (
            f"SELECT {self._context_select} FROM contexts WHERE namespace = %s AND name = %s AND {self._live}"
        )

    # -- what a backend provides --------------------------------------------------------------

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def migrate(self) -> list[int]:
        raise NotImplementedError

    async def backup(self, destination: Path, *, force: bool = False) -> None:
        raise NotImplementedError

    async def status(self) -> StoreStatus:
        raise NotImplementedError

    async def last_sequence(self) -> int:
        raise NotImplementedError

    async def poll_changes(self, sequence: int, *, limit: int, force: bool) -> list[Change]:
        raise NotImplementedError

    async def context_counts(self, context_ids: list[ContextId]) -> dict[ContextId, tuple[int, int, int]]:
        raise NotImplementedError

    async def _transaction(self, work: Callable[[Tx], Awaitable[_T]], *, writing: bool) -> _T:
        """Run ``work`` in one transaction and commit (roll back on any exception)."""
        raise NotImplementedError

    def _snapshot(self) -> AbstractAsyncContextManager[Runner]:
        """Reads that see one consistent state across calls (export)."""
        raise NotImplementedError

    async def _compute(self, size: int | None, fn: Callable[..., _T], *args: Any) -> _T:
        """CPU work of a unit of work (``size`` bytes of state; None: always worth a thread)."""
        raise NotImplementedError

    def _recall(self, namespace: str, name: str) -> StoredContext | None:
        """The context as this store last wrote it, if it keeps that (a guess: it may be stale)."""
        return None

    def _remember(self, context: StoredContext) -> None:
        """Keep ``context`` (just committed) for :meth:`_recall`, if this store does."""

    def _reserve(self, tx: Tx, namespace: str, name: str, reservation: Reservation) -> None:
        """Ask, in the statements that lock and read the live context row (after the lock, before
        the read), for what a change of it will need: filled in when that read returns. A
        backend that does not (SQLite: its sequence comes with its change row) leaves it empty."""

    async def _append_change(self, tx: Tx, write: ChangeWrite) -> tuple[int, AuditHead | None]:
        """Write the change row, snapshot and event record; return the change's sequence and,
        when the backend locked it on the way (or reserved it: ``write.reserved``), the head
        of the namespace's audit chain."""
        raise NotImplementedError

    async def _audit_head(self, tx: Tx, namespace: str) -> AuditHead:
        """Lock ``namespace``'s audit chain (to commit) and return its head."""
        raise NotImplementedError

    async def _chain_heads(self, tx: Tx, namespace: str | None) -> list[Row]:
        """``(namespace, position, hmac)`` of every chain's last row, or of ``namespace``'s."""
        raise NotImplementedError

    async def _insert_audit(self, tx: Tx, record: AuditRecord) -> None:
        raise NotImplementedError

    async def _reserve_dead_letter_id(self, tx: Tx) -> int:
        """The id the next dead letter gets (its sealed contents' associated data names it)."""
        raise NotImplementedError

    def _stale(self, sealed: SealedColumn) -> tuple[LiteralString, tuple[Any, ...]]:
        """The SQL condition (and parameters) of a value not stored the way the current key wants."""
        raise NotImplementedError

    async def _import_bounds(self, tx: Tx, rows: ImportRows | None) -> int:
        """Before an import (``rows`` None): lock out other writers. After: make sequences
        continue past what was imported; return the last change sequence."""
        raise NotImplementedError

    # -- content columns ----------------------------------------------------------------------

    def _side(self, name: str) -> LiteralString:
        """What a read selects after a content column: its sealed column, or NULL."""
        return self.SEALED_SIDE.get(name, "NULL")

    def _columns(self, name: str, column: LiteralString) -> LiteralString:
        side = self.SEALED_SIDE.get(name)
        return f"{column}, {side}" if side else column

    def _assign(self, name: str, column: LiteralString) -> LiteralString:
        side = self.SEALED_SIDE.get(name)
        return f"{column} = %s, {side} = %s" if side else f"{column} = %s"

    def _values(self, name: str, value: str | bytes | None) -> tuple[Any, ...]:
        """A content value as the columns of :meth:`_columns` hold it."""
        if name not in self.SEALED_SIDE:
            return (value,)
        return (None, value) if isinstance(value, bytes) else (value, None)

    def _open_context(self, row: Row) -> StoredContext:
        """A row read with ``_context_select``, its state opened and decoded."""
        stored = row[13] if row[13] is not None else row[9]
        return decode_context(row, self.codec.decode_text("contexts.state", row[1], row[0], row[8], stored))

    async def _context(self, row: Row) -> StoredContext:
        size = len(row[9] if row[9] is not None else row[13])
        if size <= self.INLINE_BYTES:  # the common case, on the hot path: no hop, no extra await
            return self._open_context(row)
        return await self._compute(size, self._open_context, row)

    async def _namespace_of(self, tx: Tx, context_id: Any) -> str:
        key = str(context_id)
        namespace = self._namespaces.get(key)
        if namespace is None:
            row = await tx.fetchone("SELECT namespace FROM contexts WHERE id = %s", (context_id,))
            if row is None:
                return ""
            namespace = self._namespaces[key] = str(row[0])
        return namespace

    async def _note_key(self, tx: Tx) -> None:
        """Record the sealing key's id, in the transaction that first uses it."""
        if self.codec.key_id is not None:
            await tx.execute(
                "INSERT INTO encryption_keys (key_id, first_used) VALUES (%s, %s) ON CONFLICT (key_id) DO NOTHING",
                (self.codec.key_id, utcnow()),
            )

    async def _key_ids(self, tx: Tx) -> list[str]:
        rows = await tx.fetchall("SELECT key_id FROM encryption_keys ORDER BY first_used, key_id")
        return [str(r[0]) for r in rows]

    # -- the audit log --------------------------------------------------------------------------

    async def _append_audit(
        self, tx: Tx, entry: AuditEntry, head: AuditHead | None = None, now: datetime | None = None
    ) -> AuditRecord | None:
        """Chain ``entry`` to the last row of its namespace's chain, inside the caller's write
        transaction (whose lock on that chain orders the appends of every process)."""
        signer = self.audit_signer
        if signer is None:
            return None
        sequence, position, previous = head if head is not None else await self._audit_head(tx, entry.namespace)
        record = AuditRecord.chained(
            entry, sequence=sequence, position=position, timestamp=now or utcnow(), signer=signer, previous=previous
        )
        await self._insert_audit(tx, record)
        return record


def marks(count: int | tuple[Any, ...]) -> LiteralString:
    """``%s, %s, …``: one placeholder per value."""
    return ", ".join("%s" for _ in range(count if isinstance(count, int) else len(count)))
