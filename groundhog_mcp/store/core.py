"""The store core: the :class:`~groundhog_mcp.store.base.Store` operations, written once.

The write sequence (lock, expected-revision check, apply, state, text index, name index, change
row, history snapshot, retention, audit row), the reads, the audit log and events live here;
dead letters in :mod:`~groundhog_mcp.store.dead_letters`, export, import and rotate-key in
:mod:`~groundhog_mcp.store.maintenance`, the SQLite text index in
:mod:`~groundhog_mcp.store.text_index`. A backend subclasses
:class:`StoreCore` and fills in the hooks of :class:`~groundhog_mcp.store.adapter.StoreAdapter`:
its connection, transaction, SQL dialect, locking, error translation and notification.
Contents pass through the :class:`~groundhog_mcp.store.codec.RecordCodec`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, LiteralString

from groundhog_mcp.errors import ConflictError, NotFoundError
from groundhog_mcp.models import Change, ContextId, ContextState, HistoryEntry, JSONObject, dumps, json_diff, utcnow
from groundhog_mcp.store.adapter import ChangeWrite, EncodedState, Reservation, Row, Tx, marks
from groundhog_mcp.store.base import (
    AuditChainHead,
    AuditEntry,
    AuditNote,
    AuditQuery,
    AuditRecord,
    Definition,
    EventAlreadyHandled,
    EventRecord,
    Mutation,
    Mutator,
    NewContext,
    ParentRef,
    Retention,
    StoredContext,
    StoredEvent,
    StoredRevision,
    feed_patch,
    registered,
)
from groundhog_mcp.store.codec import is_sealed
from groundhog_mcp.store.dead_letters import DeadLetters
from groundhog_mcp.store.expiry import Expiry, expiry_deadline
from groundhog_mcp.store.leases import Leasing
from groundhog_mcp.store.maintenance import Maintenance, RotationProgress
from groundhog_mcp.store.rows import (
    AUDIT_COLUMNS,
    CHANGE_COLUMNS,
    CONTEXT_COLUMNS,
    HISTORY_COLUMNS,
    LINEAGE_COLUMNS,
    LineageEdge,
    as_id,
    decode_audit,
    decode_change,
    decode_event,
    decode_history,
    decode_lineage,
    decode_state,
)
from groundhog_mcp.store.search import Searching
from groundhog_mcp.store.text_index import TextIndex

__all__ = ["RotationProgress", "StoreCore"]


class StoreCore(DeadLetters, Expiry, Leasing, Maintenance, Searching, TextIndex):
    """The :class:`~groundhog_mcp.store.base.Store` operations both backends share."""

    # -- the write sequence -------------------------------------------------------------------

    def _encode(
        self, namespace: str, context_id: ContextId, revision: int, state: ContextState, text: str | None = None
    ) -> EncodedState:
        """A state as stored at ``revision``: serialised once (``text``, when the caller already
        serialised it), sealed, and its snapshot compressed."""
        if text is None:
            text = dumps(state.to_json())
        return EncodedState(
            state=self.codec.encode_text("contexts.state", namespace, context_id, revision, text),
            size=len(text.encode("utf-8")),
            snapshot=self.codec.encode_snapshot(namespace, context_id, revision, text),
        )

    def _apply(self, current: StoredContext, mutator: Mutator, revision: int) -> tuple[Mutation, EncodedState]:
        """Mutate and encode: the CPU part of a write, in one step."""
        mutation = mutator(current)
        return mutation, self._encode(current.namespace, current.id, revision, mutation.state, mutation.text)

    async def register(
        self,
        new: NewContext,
        *,
        actor: str,
        if_exists: Literal["error", "return"],
        audit: AuditNote | None = None,
    ) -> tuple[StoredContext, Change | None]:
        async def work(tx: Tx) -> tuple[StoredContext, Change | None]:
            # The name's row in name_revisions is the lock that serialises registrations of one
            # name across instances (there is no live context row to lock yet).
            await tx.execute(
                "INSERT INTO name_revisions (namespace, name, last_revision) VALUES (%s, %s, 0)"
                " ON CONFLICT (namespace, name) DO NOTHING",
                (new.namespace, new.name),
            )
            last = await tx.fetchone(
                "SELECT last_revision FROM name_revisions WHERE namespace = %s AND name = %s" + self.FOR_UPDATE,
                (new.namespace, new.name),
            )
            existing = await tx.fetchone(self._live_row, (new.namespace, new.name))
            if existing is not None:
                if if_exists == "return":
                    return await self._context(existing), None
                raise ConflictError.already_exists(new.name, existing[8])
            if await self._remove_expired(tx, new.namespace, new.name, actor, audit) is not None:
                # The expired context's removal took a revision of the name: read its mark again.
                last = await tx.fetchone(
                    "SELECT last_revision FROM name_revisions WHERE namespace = %s AND name = %s",
                    (new.namespace, new.name),
                )
            revision = (last[0] if last else 0) + 1
            encoded = await self._compute(None, self._encode, new.namespace, new.id, revision, new.state)
            now = utcnow()
            state = self._values("contexts.state", encoded.state)
            await tx.execute(
                f"INSERT INTO contexts ({CONTEXT_COLUMNS}{self._state_side}, expires_at)"
                f" VALUES ({marks(13 + len(state))})",
                (
                    new.id,
                    new.namespace,
                    new.name,
                    new.version,
                    dumps(new.metadata),
                    dumps(new.settings),
                    dumps(new.schema) if new.schema is not None else None,
                    dumps(new.handlers),
                    revision,
                    state[0],
                    encoded.size,
                    now,
                    now,
                    *state[1:],
                    expiry_deadline(new.settings, now),
                ),
            )
            stored = registered(new, revision=revision, state_size=encoded.size, now=now)
            change = await self._record(tx, stored, "register", actor, now, None, encoded, None, audit)
            parents = (new.forked_from, *new.merged_from) if new.forked_from is not None else new.merged_from
            if parents:
                await self._link(tx, stored, parents)
            return stored, change

        stored, change = await self._transaction(work, writing=True)
        if change is not None:
            self._remember(stored)
        return stored, change

    async def mutate(
        self,
        namespace: str,
        name: str,
        expected_revision: int | None,
        mutator: Mutator,
        *,
        actor: str,
        event: EventRecord | None = None,
        audit: AuditNote | None = None,
        lease_token: int | None = None,
        inline: Callable[[StoredContext], bool] | None = None,
    ) -> tuple[StoredContext, Change]:
        # A mutator runs inside the transaction when ``inline`` says it is cheap on the context and
        # the state is at most PREPARE_ABOVE_BYTES; otherwise, for a backend whose units of work
        # hold its one database thread (SQLite), before the transaction in a worker thread, and the
        # result is used when the context is still at the revision it was computed on.
        prepared: tuple[StoredContext, Mutation, EncodedState] | None = None
        # A backend that remembers the context as it last wrote it (PostgreSQL) runs the mutator
        # on that first: when the locked row is still exactly that, the change's numbers are
        # reserved with the row's read (a round trip less, see Reservation), and a write whose
        # mutator fails never reserves any. A stale guess costs the mutator's work, not a result.
        guessed = False
        guess = self._recall(namespace, name) if event is None or event.idempotency_key is None else None
        if guess is not None and expected_revision in (None, guess.revision):
            cheap = inline is not None and guess.state_size <= self.PREPARE_ABOVE_BYTES and inline(guess)
            with contextlib.suppress(Exception):  # the transaction reports it, on the current state
                size = guess.state_size if cheap else None
                prepared = (guess, *await self._compute(size, self._apply, guess, mutator, guess.revision + 1))
                guessed = True

        async def work(tx: Tx) -> tuple[StoredContext, Change]:
            reserved = None
            if guessed and prepared is not None:
                reserved = Reservation(prepared[0].id, prepared[0].revision, lease_token)
            row = await self._lock_live(tx, namespace, name, reserved)
            current = await self._context(row)
            self._fence(row, current.id, name, lease_token)
            if event is not None and event.idempotency_key is not None:
                # Under the context's lock: a second instance handling the same event waits, then sees it.
                seen = await self._find_event(tx, current.id, event.idempotency_key)
                if seen is not None:
                    raise EventAlreadyHandled(seen)
            await self._check_expected(tx, current, expected_revision)
            revision = current.revision + 1
            light = inline is not None and current.state_size <= self.PREPARE_ABOVE_BYTES and inline(current)
            if prepared is not None and (
                prepared[0] == current
                if guessed
                else (prepared[0].id, prepared[0].revision) == (current.id, current.revision)
            ):
                _, mutation, encoded = prepared
            elif prepared is None and not light and self.PREPARES:
                raise _Prepare(current)
            else:
                size = current.state_size if light else None  # None: worth a thread (PostgreSQL)
                mutation, encoded = await self._compute(size, self._apply, current, mutator, revision)
            now = utcnow()
            reindex = self._words_may_change(row[9], encoded.state, mutation.patch, current.state)
            if reindex:
                await self._unindex_text(tx, (current.id,))
            await tx.execute(
                f"UPDATE contexts SET revision = %s, {self._assign('contexts.state', 'state')}, state_size = %s,"
                " updated_at = %s, expires_at = %s WHERE id = %s",
                (
                    revision,
                    *self._values("contexts.state", encoded.state),
                    encoded.size,
                    now,
                    # A write resets the idle expiry (under the new settings, for a redefinition).
                    expiry_deadline((mutation.definition or current).settings, now),
                    current.id,
                ),
            )
            if reindex:
                await self._index_text(tx, (current.id,))
            stored = dataclasses.replace(
                current, revision=revision, state=mutation.state, state_size=encoded.size, updated_at=now
            )
            if mutation.definition is not None:
                stored = await self._redefine(tx, stored, mutation.definition)
            change = await self._record(
                tx, stored, mutation.op, actor, now, mutation.patch, encoded, event, audit, reserved, mark_name=False
            )
            if mutation.parents:
                await self._link(tx, stored, mutation.parents)
            return stored, change

        try:
            written = await self._transaction(work, writing=True)
        except _Prepare as large:
            current = large.current
            mutation, encoded = await asyncio.to_thread(self._apply, current, mutator, current.revision + 1)
            prepared, guessed = (current, mutation, encoded), False
            written = await self._transaction(work, writing=True)
        self._remember(written[0])
        return written

    async def unregister(
        self,
        namespace: str,
        name: str,
        expected_revision: int | None,
        *,
        purge: bool,
        actor: str,
        audit: AuditNote | None = None,
        lease_token: int | None = None,
    ) -> Change:
        async def work(tx: Tx) -> Change:
            reserved = Reservation(None, expected_revision, lease_token)
            row = await self._lock_live(tx, namespace, name, reserved)
            current = await self._context(row)  # (ids as the store's types, not the row's)
            self._fence(row, current.id, name, lease_token)
            await self._check_expected(tx, current, expected_revision)
            return await self._remove(
                tx, row, current, "unregister", purge=purge, actor=actor, audit=audit, reserved=reserved
            )

        return await self._transaction(work, writing=True)

    async def _remove(
        self,
        tx: Tx,
        row: Row,
        current: StoredContext,
        op: str,
        *,
        purge: bool,
        actor: str,
        audit: AuditNote | None,
        reserved: Reservation | None = None,
    ) -> Change:
        """Unregister (or expire) the locked live context ``current`` (read as ``row``)."""
        await tx.execute("DELETE FROM leases WHERE context_id = %s", (current.id,))
        await tx.execute("DELETE FROM lease_waiters WHERE context_id = %s", (current.id,))
        now = utcnow()
        revision = current.revision + 1
        context_id = current.id
        namespace = current.namespace
        if purge:
            # Purge removes the content everywhere: snapshots, the diffs in the change feed, events.
            patch_null = self._assign("changes.patch", "patch").replace("%s", "NULL")
            await tx.execute("DELETE FROM history WHERE context_id = %s", (context_id,))
            await tx.execute(f"UPDATE changes SET {patch_null} WHERE context_id = %s", (context_id,))
            await tx.execute("DELETE FROM events WHERE context_id = %s", (context_id,))
            await tx.execute("DELETE FROM dead_letters WHERE context_id = %s", (context_id,))
            await tx.execute("DELETE FROM lineage WHERE context_id = %s", (context_id,))
            await tx.execute("DELETE FROM contexts WHERE id = %s", (context_id,))
        elif self.codec.sealing or is_sealed(row[13] if row[13] is not None else row[9]):
            # The state's associated data names the revision: sealed again for the new one.
            text = dumps(current.state.to_json())
            state = self.codec.encode_text("contexts.state", namespace, context_id, revision, text)
            await self._unindex_text(tx, (context_id,))
            await tx.execute(
                "UPDATE contexts SET deleted_at = %s, revision = %s, updated_at = %s,"
                f" {self._assign('contexts.state', 'state')} WHERE id = %s",
                (now, revision, now, *self._values("contexts.state", state), context_id),
            )
            await self._index_text(tx, (context_id,))
        else:
            await tx.execute(
                "UPDATE contexts SET deleted_at = %s, revision = %s, updated_at = %s WHERE id = %s",
                (now, revision, now, context_id),
            )
        stored = dataclasses.replace(current, revision=revision)
        return await self._record(tx, stored, op, actor, now, None, None, None, audit, reserved)

    async def _redefine(self, tx: Tx, current: StoredContext, definition: Definition) -> StoredContext:
        new = definition
        await tx.execute(
            "UPDATE contexts SET version = %s, metadata = %s, settings = %s, schema = %s, handlers = %s WHERE id = %s",
            (
                new.version,
                dumps(new.metadata),
                dumps(new.settings),
                dumps(new.schema) if new.schema is not None else None,
                dumps(new.handlers),
                current.id,
            ),
        )
        return dataclasses.replace(
            current,
            version=new.version,
            metadata=new.metadata,
            settings=new.settings,
            schema=new.schema,
            handlers=new.handlers,
        )

    async def _link(self, tx: Tx, ctx: StoredContext, parents: tuple[ParentRef, ...]) -> None:
        """Record where revision ``ctx.revision`` came from (a fork point, merged inputs)."""
        for ref in parents:
            await tx.execute(
                f"INSERT INTO lineage ({LINEAGE_COLUMNS}, namespace) VALUES ({marks(7)})"
                " ON CONFLICT (context_id, revision, parent_id) DO NOTHING",
                (
                    ctx.id,
                    ctx.revision,
                    ref.id,
                    ref.parent.revision,
                    ref.parent.name,
                    ref.parent.kind,
                    ctx.namespace,
                ),
            )

    async def _lock_live(self, tx: Tx, namespace: str, name: str, reserved: Reservation | None = None) -> Row:
        """Lock and read the live context row (with ``reserved``: and reserve what its change
        needs, in the same round trip on PostgreSQL)."""
        await self._wait_for_lock(tx, namespace, name)
        if reserved is not None:
            self._reserve(tx, namespace, name, reserved)
        row = await tx.fetchone(self._locked_row + self.FOR_UPDATE, (namespace, name))
        if row is None:
            raise NotFoundError(f"name: no context named {name!r}")
        return row

    async def _check_expected(self, tx: Tx, current: StoredContext, expected: int | None) -> None:
        if expected is None or expected == current.revision:
            return
        missed: list[JSONObject] | None = None
        if 0 < expected < current.revision:
            found = await tx.fetchone(
                "SELECT snapshot FROM history WHERE context_id = %s AND revision = %s", (current.id, expected)
            )
            if found is not None:
                text = self.codec.decode_snapshot(current.namespace, current.id, expected, found[0])
                missed = await self._compute(len(text), _missed, text, current)
        raise ConflictError(current.name, expected, current.revision, missed)

    async def _record(
        self,
        tx: Tx,
        ctx: StoredContext,
        op: str,
        actor: str,
        now: datetime,
        patch: list[JSONObject] | None,
        encoded: EncodedState | None,
        event: EventRecord | None,
        audit: AuditNote | None,
        reserved: Reservation | None = None,
        *,
        mark_name: bool = True,
    ) -> Change:
        """The name's revision high-water mark, then the change row, the history snapshot and the
        event record (one statement on PostgreSQL), retention, and the audit row.

        The mark is what a later registration of the name continues from, so it is written when
        a context is registered or removed; a live context's row holds its revision, and an
        update (``mark_name`` false) does not write the mark: one statement less per write."""
        if mark_name:
            await tx.execute(
                "INSERT INTO name_revisions (namespace, name, last_revision) VALUES (%s, %s, %s)"
                " ON CONFLICT (namespace, name) DO UPDATE SET last_revision = excluded.last_revision",
                (ctx.namespace, ctx.name, ctx.revision),
            )
        codec, ns, cid, revision = self.codec, ctx.namespace, ctx.id, ctx.revision
        stored_patch, patch_bytes = feed_patch(patch)
        sequence, head = await self._append_change(
            tx,
            ChangeWrite(
                context_id=cid,
                namespace=ns,
                name=ctx.name,
                revision=revision,
                op=op,
                actor=actor,
                now=now,
                patch=codec.encode_text("changes.patch", ns, cid, revision, stored_patch)
                if stored_patch is not None
                else None,
                snapshot=encoded.snapshot if encoded is not None else None,
                size=encoded.size if encoded is not None else None,
                event=event,
                payload=codec.encode_text("events.payload", ns, cid, revision, dumps(event.payload))
                if event is not None
                else None,
                reserved=reserved,
            ),
        )
        retention = self.retention.for_context(ctx.settings)
        if encoded is not None and retention.due(revision):
            await self._prune(tx, cid, revision, retention, now)
        change = Change(
            sequence, cid, ns, ctx.name, revision, op, actor, now, patch, patch_bytes if patch is not None else None
        )
        if self.audit_signer is not None:
            await self._append_audit(tx, AuditEntry.of_change(change, audit), head, now)
        return change

    async def _prune(self, tx: Tx, context_id: ContextId, revision: int, retention: Retention, now: datetime) -> None:
        """Drop history beyond retention, and the change rows that went with it."""
        oldest_query: LiteralString = "SELECT sequence FROM history WHERE context_id = %s ORDER BY revision LIMIT 1"
        oldest = await tx.fetchone(oldest_query, (context_id,))
        if oldest is None:
            return
        if retention.keep_revisions > 0:
            await tx.execute(
                "DELETE FROM history WHERE context_id = %s AND revision <= %s",
                (context_id, revision - retention.keep_revisions),
            )
        if retention.keep_days is not None:
            await tx.execute(
                "DELETE FROM history WHERE context_id = %s AND revision < %s AND timestamp < %s",
                (context_id, revision, now - timedelta(days=retention.keep_days)),
            )
        kept = await tx.fetchone(oldest_query, (context_id,))
        if kept is not None and kept[0] > oldest[0]:
            # The change rows of pruned revisions go too (their diffs are state): deleted rows free
            # whole pages for reuse. The registration row stays: it anchors the count of updates.
            await tx.execute(
                "DELETE FROM changes WHERE context_id = %s AND sequence >= %s AND sequence < %s AND op <> 'register'",
                (context_id, oldest[0], kept[0]),
            )

    # -- the audit log --------------------------------------------------------------------------

    async def append_audit(self, entry: AuditEntry) -> AuditRecord | None:
        if self.audit_signer is None:
            return None
        return await self._transaction(lambda tx: self._append_audit(tx, entry), writing=True)

    async def read_audit(self, query: AuditQuery) -> list[AuditRecord]:
        where: list[LiteralString] = []
        params: list[Any] = []
        # A chain's rows are ordered by position (a namespace's) or sequence (the legacy chain).
        order: LiteralString = "position" if query.chain and query.namespace is not None else "sequence"
        if query.chain:
            where.append("position IS NOT NULL" if query.namespace is not None else "position IS NULL")
        conditions: tuple[tuple[LiteralString, Any], ...] = (
            ("namespace = %s", query.namespace),
            ("context = %s", query.context),
            ("principal = %s", query.principal),
            ("operation = %s", query.operation),
            ("timestamp >= %s", query.since),
            ("timestamp < %s", query.until),
            (f"{order} > %s", query.after),
            (f"{order} < %s", query.before),
        )
        for condition, value in conditions:
            if value is not None:
                where.append(condition)
                params.append(value)
        if query.prefix:
            # Names are ASCII ([A-Za-z0-9._-]), so a prefix range scan is exact; `~` sorts after all of them.
            where.append("context >= %s AND context < %s")
            params.extend((query.prefix, query.prefix + "~"))
        sql: LiteralString = f"SELECT {AUDIT_COLUMNS} FROM audit_log"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order} DESC LIMIT %s" if query.newest_first else f" ORDER BY {order} LIMIT %s"
        rows = await self._transaction(lambda tx: tx.fetchall(sql, (*params, query.limit)), writing=False)
        return [decode_audit(r) for r in rows]

    async def audit_heads(self, namespace: str | None = None) -> list[AuditChainHead]:
        async def work(tx: Tx) -> list[AuditChainHead]:
            heads: list[AuditChainHead] = []
            if namespace is None:
                legacy = await tx.fetchone("SELECT sequence, hmac FROM audit_legacy")
                if legacy is not None:
                    heads.append(AuditChainHead(None, int(legacy[0]), str(legacy[1])))
            rows = sorted(await self._chain_heads(tx, namespace), key=lambda r: str(r[0]))
            heads.extend(AuditChainHead(str(r[0]), int(r[1]), str(r[2])) for r in rows)
            if namespace is not None and not rows:
                heads.append(AuditChainHead(namespace, 0, ""))
            return heads

        return await self._transaction(work, writing=False)

    # -- events -----------------------------------------------------------------------------------

    async def _find_event(self, tx: Tx, context_id: ContextId, key: str) -> StoredEvent | None:
        row = await tx.fetchone(
            "SELECT id, type, revision, sequence, created_at FROM events"
            " WHERE context_id = %s AND idempotency_key = %s",
            (context_id, key),
        )
        return decode_event(row, context_id, key) if row is not None else None

    async def find_event(self, context_id: ContextId, idempotency_key: str) -> StoredEvent | None:
        return await self._transaction(lambda tx: self._find_event(tx, context_id, idempotency_key), writing=False)

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, namespace: str, name: str) -> StoredContext | None:
        async def work(tx: Tx) -> StoredContext | None:
            row = await tx.fetchone(self._live_row, (namespace, name))
            return await self._context(row) if row is not None else None

        return await self._transaction(work, writing=False)

    async def get_by_id(self, context_id: ContextId) -> StoredContext | None:
        async def work(tx: Tx) -> StoredContext | None:
            row = await tx.fetchone(
                f"SELECT {self._context_select} FROM contexts WHERE id = %s AND {self._live}", (context_id,)
            )
            return await self._context(row) if row is not None else None

        return await self._transaction(work, writing=False)

    async def locate(self, context_id: ContextId) -> tuple[str, str] | None:
        sql: LiteralString = f"SELECT namespace, name FROM contexts WHERE id = %s AND {self._live}"
        row = await self._transaction(lambda tx: tx.fetchone(sql, (context_id,)), writing=False)
        return (str(row[0]), str(row[1])) if row is not None else None

    async def list(self, namespace: str, *, prefix: str, after: str | None, limit: int) -> list[StoredContext]:
        async def work(tx: Tx) -> list[StoredContext]:
            # Names are ASCII and sort bytewise: the prefix range scan is exact, `~` sorts after all of them.
            rows = await tx.fetchall(
                f"SELECT {self._context_select} FROM contexts WHERE namespace = %s AND {self._live}"
                " AND name >= %s AND name < %s AND name > %s ORDER BY name LIMIT %s",
                (namespace, prefix, prefix + "~", after or "", limit),
            )
            size = sum(len(r[9] if r[9] is not None else r[13]) for r in rows)
            return await self._compute(size, lambda: [self._open_context(r) for r in rows])

        return await self._transaction(work, writing=False)

    async def read_revision(self, context_id: ContextId, revision: int) -> StoredRevision | int | None:
        async def work(tx: Tx) -> StoredRevision | int | None:
            row = await tx.fetchone(
                f"SELECT {HISTORY_COLUMNS}, snapshot FROM history WHERE context_id = %s AND revision = %s",
                (context_id, revision),
            )
            if row is None:
                oldest = await tx.fetchone(
                    "SELECT revision, op FROM history WHERE context_id = %s ORDER BY revision LIMIT 1", (context_id,)
                )
                # Below the registration snapshot lies an earlier context of the same name, not pruned history.
                if oldest is not None and revision < oldest[0] and oldest[1] != "register":
                    return int(oldest[0])
                return None
            return await self._open_snapshot(tx, context_id, row)

        return await self._transaction(work, writing=False)

    async def _open_snapshot(self, tx: Tx, context_id: ContextId, row: Row) -> StoredRevision:
        """A history row read with ``HISTORY_COLUMNS, snapshot``, its snapshot opened."""
        # A sealed snapshot's associated data names the namespace: one more read.
        namespace = await self._namespace_of(tx, context_id) if is_sealed(row[6]) else ""
        text = self.codec.decode_snapshot(namespace, context_id, int(row[0]), row[6])
        state = await self._compute(len(text), decode_state, text)
        return StoredRevision(context_id=context_id, entry=decode_history(row), state=state)

    async def revision_at(self, context_id: ContextId, at: datetime) -> StoredRevision | int | None:
        async def work(tx: Tx) -> StoredRevision | int | None:
            # history_time (context_id, timestamp, revision): one index seek, whatever the history's length.
            row = await tx.fetchone(
                f"SELECT {HISTORY_COLUMNS}, snapshot FROM history WHERE context_id = %s AND timestamp <= %s"
                " ORDER BY timestamp DESC, revision DESC LIMIT 1",
                (context_id, at),
            )
            if row is not None:
                return await self._open_snapshot(tx, context_id, row)
            oldest = await tx.fetchone(
                "SELECT revision FROM history WHERE context_id = %s ORDER BY revision LIMIT 1", (context_id,)
            )
            return int(oldest[0]) if oldest is not None else None

        return await self._transaction(work, writing=False)

    async def lineage(self, namespace: str, context_ids: list[ContextId], *, limit: int) -> list[LineageEdge]:
        if not context_ids:
            return []
        rows = await self._transaction(
            lambda tx: tx.fetchall(
                f"SELECT {LINEAGE_COLUMNS} FROM lineage WHERE namespace = %s"
                f" AND context_id IN ({marks(len(context_ids))}) ORDER BY context_id, revision LIMIT %s",
                (namespace, *context_ids, limit),
            ),
            writing=False,
        )
        return [decode_lineage(r) for r in rows]

    async def last_writes(self, namespace: str, context_ids: Sequence[ContextId]) -> dict[ContextId, HistoryEntry]:
        if not context_ids:
            return {}
        rows = await self._transaction(
            lambda tx: tx.fetchall(  # the newest revision of each: one primary-key seek per context
                "SELECT h.context_id, h.revision, h.sequence, h.op, h.actor, h.timestamp, h.size"
                " FROM history h JOIN contexts c ON c.id = h.context_id"
                f" WHERE c.namespace = %s AND h.context_id IN ({marks(len(context_ids))})"
                " AND h.revision = (SELECT max(m.revision) FROM history m WHERE m.context_id = h.context_id)",
                (namespace, *context_ids),
            ),
            writing=False,
        )
        return {as_id(r[0]): decode_history(r[1:]) for r in rows}

    async def history(
        self,
        context_id: ContextId,
        *,
        before: int | None,
        limit: int,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[HistoryEntry]:
        sql: LiteralString = f"SELECT {HISTORY_COLUMNS} FROM history WHERE context_id = %s AND revision < %s"
        params: list[Any] = [context_id, before if before is not None else 2**62]
        if since is not None:
            sql += " AND timestamp >= %s"
            params.append(since)
        if until is not None:
            sql += " AND timestamp < %s"
            params.append(until)

        async def work(tx: Tx) -> list[HistoryEntry]:
            rows = await tx.fetchall(sql + " ORDER BY revision DESC LIMIT %s", (*params, limit))
            entries = [decode_history(r) for r in rows]
            if not entries:
                return entries
            links = await tx.fetchall(
                f"SELECT {LINEAGE_COLUMNS} FROM lineage WHERE context_id = %s AND revision >= %s AND revision <= %s"
                " ORDER BY revision, parent_name",
                (context_id, entries[-1].revision, entries[0].revision),
            )
            parents: dict[int, list[LineageEdge]] = {}
            for link in links:
                edge = decode_lineage(link)
                parents.setdefault(edge.revision, []).append(edge)
            return [
                dataclasses.replace(e, parents=tuple(p.ref.parent for p in parents[e.revision]))
                if e.revision in parents
                else e
                for e in entries
            ]

        return await self._transaction(work, writing=False)

    async def _changes_after(self, tx: Tx, sequence: int, limit: int) -> list[Change]:
        rows = await tx.fetchall(
            f"SELECT {CHANGE_COLUMNS}, {self._side('changes.patch')} FROM changes"
            " WHERE sequence > %s ORDER BY sequence LIMIT %s",
            (sequence, limit),
        )
        changes: list[Change] = []
        for r in rows:
            stored = r[9] if r[9] is not None else r[8]
            patch = self.codec.decode_text("changes.patch", r[2], r[1], r[4], stored) if stored is not None else None
            changes.append(decode_change(r, patch))
        return changes

    async def changes_after(self, sequence: int, *, limit: int) -> list[Change]:
        return await self._transaction(lambda tx: self._changes_after(tx, sequence, limit), writing=False)

    async def namespace_summary(self, namespace: str, prefix: str) -> tuple[int, int]:
        bounds = (namespace, prefix, prefix + "~")

        async def work(tx: Tx) -> tuple[int, int]:
            count = await tx.fetchone(
                f"SELECT count(*) FROM contexts WHERE namespace = %s AND {self._live} AND name >= %s AND name < %s",
                bounds,
            )
            last = await tx.fetchone(
                "SELECT sequence FROM changes WHERE namespace = %s AND name >= %s AND name < %s"
                " ORDER BY sequence DESC LIMIT 1",
                bounds,
            )
            return int(count[0]) if count else 0, int(last[0]) if last else 0

        return await self._transaction(work, writing=False)


class _Prepare(Exception):
    """A unit of work found a mutation too costly to run on the database thread."""

    def __init__(self, current: StoredContext) -> None:
        super().__init__(current.name)
        self.current = current


def _missed(snapshot_text: str, current: StoredContext) -> list[JSONObject]:
    """What happened between the snapshot the caller expected and the current state."""
    return json_diff(decode_state(snapshot_text).document(), current.state.document())
