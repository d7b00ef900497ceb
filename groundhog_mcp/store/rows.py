"""The rows a store reads, as typed records, and the one decoder of each.

Both backends read the same columns in the same order (SQL text differs, the shape does not):
SQLite hands back ids and times as text, PostgreSQL as ``UUID`` and ``datetime``; the decoders
here take either. Contents that may be sealed (encryption at rest) or compressed are opened by
the :class:`~groundhog_mcp.store.codec.RecordCodec` first and passed in as plaintext.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from groundhog_mcp.models import (
    Change,
    ContextId,
    ContextState,
    HistoryEntry,
    JSONObject,
    Parent,
    format_timestamp,
    parse_timestamp,
)

if TYPE_CHECKING:
    from groundhog_mcp.store.base import AuditEntry, AuditSigner

__all__ = [
    "AUDIT_COLUMNS",
    "CHANGE_COLUMNS",
    "CONTEXT_COLUMNS",
    "DEAD_LETTER_COLUMNS",
    "HISTORY_COLUMNS",
    "LINEAGE_COLUMNS",
    "AuditRecord",
    "AuditValue",
    "DeadLetter",
    "Lease",
    "LeaseAction",
    "LeaseGrant",
    "LeaseTurn",
    "LineageEdge",
    "ParentRef",
    "StoredContext",
    "StoredEvent",
    "StoredRevision",
    "as_id",
    "as_time",
    "decode_audit",
    "decode_change",
    "decode_context",
    "decode_dead_letter",
    "decode_event",
    "decode_history",
    "decode_lineage",
    "decode_state",
]

# The column lists every read selects (the backends may add their sealed columns after these).
CONTEXT_COLUMNS: Final = (
    "id, namespace, name, version, metadata, settings, schema, handlers, revision, state, "
    "state_size, created_at, updated_at"
)
CHANGE_COLUMNS: Final = "sequence, context_id, namespace, name, revision, op, actor, timestamp, patch"
HISTORY_COLUMNS: Final = "revision, sequence, op, actor, timestamp, size"
LINEAGE_COLUMNS: Final = "context_id, revision, parent_id, parent_revision, parent_name, kind"
DEAD_LETTER_COLUMNS: Final = (
    "id, namespace, context_id, name, type, payload, idempotency_key, attempts, last_error, created_at,"
    " replayed_at, replay_revision"
)
AUDIT_COLUMNS: Final = (
    "sequence, timestamp, principal, namespace, operation, outcome, context, context_id, revision, "
    "change_sequence, request_id, detail, key_id, hmac, position"
)

Row = Sequence[Any]


def as_id(value: Any) -> uuid.UUID:
    """A context id as read: SQLite's text or PostgreSQL's ``UUID``."""
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)


def as_time(value: Any) -> datetime:
    """A time as read: SQLite's RFC 3339 text or PostgreSQL's ``datetime``, in UTC."""
    return parse_timestamp(value) if isinstance(value, str) else value.astimezone(UTC)


@dataclass(frozen=True)
class StoredContext:
    """A context row with its current state."""

    id: ContextId
    namespace: str
    name: str
    version: str
    metadata: JSONObject
    settings: JSONObject
    schema: JSONObject | None
    handlers: JSONObject
    revision: int
    state: ContextState
    state_size: int
    created_at: datetime
    updated_at: datetime


LeaseAction = Literal["take", "renew", "release"]


@dataclass(frozen=True)
class Lease:
    """A context's lease row: the last fencing token issued; holder and expiry while held."""

    context_id: ContextId
    token: int
    holder: str | None
    expires_at: datetime | None

    def held(self, now: datetime) -> bool:
        return self.holder is not None and self.expires_at is not None and self.expires_at > now


@dataclass(frozen=True)
class LeaseGrant:
    """What a lease action did: the lease row after it (``held`` False after a release) and its
    change-feed entry (None when nothing changed: a release of a lease already free)."""

    lease: Lease
    held: bool
    change: Change | None


@dataclass(frozen=True)
class LeaseTurn:
    """One try of a waiter in the lease's waiting line: the lease taken (``grant``), or its
    ``place`` in line (kept until it takes the lease or leaves), the ``ahead`` live waiters that
    came before it, the lease held now (None: free), and ``retry_at``: when the line may move
    without a change in the feed (the held lease's expiry, or the heartbeat deadline of a waiter
    ahead, were it to stop waiting)."""

    grant: LeaseGrant | None
    place: int | None
    ahead: int
    held: Lease | None
    retry_at: datetime | None


@dataclass(frozen=True)
class StoredEvent:
    """A handled event as recorded: what its idempotency key answers on a repeat."""

    id: int
    context_id: ContextId
    type: str
    idempotency_key: str | None
    revision: int
    sequence: int
    created_at: datetime


@dataclass(frozen=True)
class DeadLetter:
    """An event whose handler kept failing; kept with its last error until replayed."""

    id: int
    namespace: str
    context_id: ContextId
    name: str
    type: str
    payload: JSONObject
    idempotency_key: str | None
    attempts: int
    last_error: str
    created_at: datetime
    replayed_at: datetime | None = None
    replay_revision: int | None = None


@dataclass(frozen=True)
class StoredRevision:
    """One history snapshot."""

    context_id: ContextId
    entry: HistoryEntry
    state: ContextState


AuditValue = str | int | None


@dataclass(frozen=True)
class AuditRecord:
    """A stored audit row: ``hmac`` covers :meth:`content` and the previous row's ``hmac`` in
    its chain. ``sequence`` numbers the rows of the whole log; ``position`` numbers the rows of
    the row's chain (its namespace's; ``""``: store-wide rows), and is None for a row written
    before schema 10, which belongs to the legacy chain of every namespace, ordered by
    ``sequence`` (security/audit.py)."""

    sequence: int
    timestamp: datetime
    principal: str
    namespace: str
    operation: str
    outcome: str
    context: str | None
    context_id: ContextId | None
    revision: int | None
    change_sequence: int | None
    request_id: str | None
    detail: str | None
    key_id: str
    hmac: str
    position: int | None = None

    def content(self) -> dict[str, AuditValue]:
        """Every field but the HMAC, as the signer sees it (ids and times as text; a legacy
        row's content has no ``position``, as it was signed)."""
        content: dict[str, AuditValue] = {
            "sequence": self.sequence,
            "timestamp": format_timestamp(self.timestamp),
            "principal": self.principal,
            "namespace": self.namespace,
            "operation": self.operation,
            "outcome": self.outcome,
            "context": self.context,
            "context_id": str(self.context_id) if self.context_id is not None else None,
            "revision": self.revision,
            "change_sequence": self.change_sequence,
            "request_id": self.request_id,
            "detail": self.detail,
            "key_id": self.key_id,
        }
        if self.position is not None:
            content["position"] = self.position
        return content

    def to_json(self) -> JSONObject:
        return {**self.content(), "hmac": self.hmac}

    def stored_values(self) -> tuple[Any, ...]:
        """The ``audit_log`` columns from ``principal`` to ``position``, in :data:`AUDIT_COLUMNS`
        order (the stores write ``sequence`` and ``timestamp`` first, each in its own type)."""
        content = self.content()
        return (*(content[k] for k in list(content)[2:13]), self.hmac, self.position)

    @classmethod
    def chained(
        cls,
        entry: AuditEntry,
        *,
        sequence: int,
        position: int,
        timestamp: datetime,
        signer: AuditSigner,
        previous: str,
    ) -> AuditRecord:
        """Row ``position`` of ``entry.namespace``'s chain, after the row whose HMAC is
        ``previous`` ("" before the chain's first row)."""
        unsigned = cls(
            sequence=sequence,
            position=position,
            timestamp=timestamp,
            principal=entry.principal,
            namespace=entry.namespace,
            operation=entry.operation,
            outcome=entry.outcome,
            context=entry.context,
            context_id=entry.context_id,
            revision=entry.revision,
            change_sequence=entry.change_sequence,
            request_id=entry.request_id,
            detail=entry.detail,
            key_id=signer.key_id,
            hmac="",
        )
        return dataclasses.replace(unsigned, hmac=signer.sign(unsigned.content(), previous))


# -- decoders (one per row type) ---------------------------------------------------------------


def decode_state(text: str) -> ContextState:
    return ContextState.from_json(json.loads(text))


def decode_context(row: Row, state_text: str) -> StoredContext:
    """A row read with :data:`CONTEXT_COLUMNS`; ``state_text`` is its state in plaintext."""
    return StoredContext(
        id=as_id(row[0]),
        namespace=row[1],
        name=row[2],
        version=row[3],
        metadata=json.loads(row[4]),
        settings=json.loads(row[5]),
        schema=json.loads(row[6]) if row[6] is not None else None,
        handlers=json.loads(row[7]),
        revision=row[8],
        state=decode_state(state_text),
        state_size=row[10],
        created_at=as_time(row[11]),
        updated_at=as_time(row[12]),
    )


def decode_change(row: Row, patch_text: str | None) -> Change:
    """A row read with :data:`CHANGE_COLUMNS`; ``patch_text`` is its patch in plaintext."""
    return Change(
        sequence=row[0],
        context_id=as_id(row[1]),
        namespace=row[2],
        name=row[3],
        revision=row[4],
        op=row[5],
        actor=row[6],
        timestamp=as_time(row[7]),
        patch=json.loads(patch_text) if patch_text is not None else None,
    )


def decode_history(row: Row) -> HistoryEntry:
    """A row read with :data:`HISTORY_COLUMNS`."""
    return HistoryEntry(row[0], row[1], row[2], row[3], as_time(row[4]), row[5])


@dataclass(frozen=True)
class ParentRef:
    """A parent revision as written and read: the parent context's id, and what is shown of it."""

    id: ContextId
    parent: Parent


@dataclass(frozen=True)
class LineageEdge:
    """A lineage row: revision ``revision`` of ``context_id`` descends from ``ref``."""

    context_id: ContextId
    revision: int
    ref: ParentRef


def decode_lineage(row: Row) -> LineageEdge:
    """A row read with :data:`LINEAGE_COLUMNS`."""
    parent = Parent(kind=str(row[5]), name=str(row[4]), revision=int(row[3]))
    return LineageEdge(as_id(row[0]), int(row[1]), ParentRef(as_id(row[2]), parent))


def decode_event(row: Row, context_id: ContextId, idempotency_key: str) -> StoredEvent:
    """A row read with ``id, type, revision, sequence, created_at``."""
    return StoredEvent(row[0], context_id, row[1], idempotency_key, row[2], row[3], as_time(row[4]))


def decode_dead_letter(row: Row, payload_text: str, last_error: str) -> DeadLetter:
    """A row read with :data:`DEAD_LETTER_COLUMNS`; payload and last error in plaintext."""
    return DeadLetter(
        id=row[0],
        namespace=row[1],
        context_id=as_id(row[2]),
        name=row[3],
        type=row[4],
        payload=json.loads(payload_text),
        idempotency_key=row[6],
        attempts=row[7],
        last_error=last_error,
        created_at=as_time(row[9]),
        replayed_at=as_time(row[10]) if row[10] is not None else None,
        replay_revision=row[11],
    )


def decode_audit(row: Row) -> AuditRecord:
    """A row read with :data:`AUDIT_COLUMNS`."""
    (
        seq,
        ts,
        principal,
        namespace,
        operation,
        outcome,
        context,
        cid,
        revision,
        change_seq,
        rid,
        detail,
        key,
        mac,
        pos,
    ) = tuple(row)
    return AuditRecord(
        sequence=seq,
        timestamp=as_time(ts),
        principal=principal,
        namespace=namespace,
        operation=operation,
        outcome=outcome,
        context=context,
        context_id=as_id(cid) if cid is not None else None,
        revision=revision,
        change_sequence=change_seq,
        request_id=rid,
        detail=detail,
        key_id=key,
        hmac=mac,
        position=pos,
    )
