"""The storage contract every backend implements (SQLite, PostgreSQL).

A backend owns durability and atomicity; it knows nothing of merge strategies, schemas
or MCP. Every write is one transaction: the backend locks the context, checks
``expected_revision``, calls the service's pure ``Mutator`` with the current record,
writes the new state, its history snapshot and its change row, and commits. The
mutator may raise a :class:`~groundhog_mcp.errors.ContextError`; the transaction then
rolls back and nothing is written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from groundhog_mcp.errors import EncryptionKeyError
from groundhog_mcp.models import (
    Change,
    ContextId,
    ContextState,
    HistoryEntry,
    JSONObject,
    dumps,
)
from groundhog_mcp.store.rows import (
    AuditRecord,
    AuditValue,
    DeadLetter,
    Lease,
    LeaseAction,
    LeaseGrant,
    LeaseTurn,
    LineageEdge,
    ParentRef,
    StoredContext,
    StoredEvent,
    StoredRevision,
)

if TYPE_CHECKING:
    from groundhog_mcp.store.search import JsonRef, SearchQuery

__all__ = [
    "AUDIT_DENIED",
    "AUDIT_OK",
    "FEED_PATCH_MAX_BYTES",
    "FEED_PATCH_MAX_OPS",
    "SEALED_MAGIC",
    "AuditChainHead",
    "AuditEntry",
    "AuditNote",
    "AuditQuery",
    "AuditRecord",
    "AuditSigner",
    "ChangeAnnouncer",
    "DeadLetter",
    "Definition",
    "EventAlreadyHandled",
    "EventRecord",
    "Lease",
    "LeaseAction",
    "LeaseGrant",
    "LeaseTurn",
    "LineageEdge",
    "MaintenanceStore",
    "Mutation",
    "Mutator",
    "NewContext",
    "ParentRef",
    "RecordCipher",
    "Retention",
    "RotationProgress",
    "Store",
    "StoreStatus",
    "StoredContext",
    "StoredEvent",
    "StoredRevision",
    "feed_patch",
    "record_aad",
    "registered",
    "sealed_key_id",
]


@dataclass(frozen=True)
class NewContext:
    """Everything ``register`` needs to create a context at its first revision."""

    id: ContextId
    namespace: str
    name: str
    version: str
    metadata: JSONObject
    settings: JSONObject
    schema: JSONObject | None
    handlers: JSONObject
    state: ContextState
    forked_from: ParentRef | None = None  # a fork: the revision its state was copied from
    merged_from: tuple[ParentRef, ...] = ()  # a merge that creates it: the revisions it took in


def registered(new: NewContext, *, revision: int, state_size: int, now: datetime) -> StoredContext:
    """The stored record of a context just registered at ``revision``."""
    return StoredContext(
        id=new.id,
        namespace=new.namespace,
        name=new.name,
        version=new.version,
        metadata=new.metadata,
        settings=new.settings,
        schema=new.schema,
        handlers=new.handlers,
        revision=revision,
        state=new.state,
        state_size=state_size,
        created_at=now,
        updated_at=now,
    )


@dataclass(frozen=True)
class Definition:
    """A context's definition as a redefinition writes it (see :class:`Mutation`)."""

    version: str
    metadata: JSONObject
    settings: JSONObject
    schema: JSONObject | None
    handlers: JSONObject


@dataclass(frozen=True)
class Mutation:
    """What a mutator returns: the new state and the RFC 6902 patch from the current one, and
    with ``definition`` the context's new definition, written in the same transaction."""

    state: ContextState
    patch: list[JSONObject]
    op: str = "update"
    parents: tuple[ParentRef, ...] = ()  # a merge: the other contexts' revisions it took in
    definition: Definition | None = None
    # ``dumps(state.to_json())`` when the mutator already made it (to check the size limit): the
    # store writes it as it is instead of serialising the state again.
    text: str | None = None


@dataclass(frozen=True)
class EventRecord:
    """An event whose state change is being committed; written in the same transaction."""

    type: str
    payload: JSONObject
    idempotency_key: str | None


class EventAlreadyHandled(Exception):
    """The idempotency key was seen before: nothing was written; ``event`` is the first result."""

    def __init__(self, event: StoredEvent) -> None:
        super().__init__(f"event with idempotency key {event.idempotency_key!r} already handled")
        self.event = event


Mutator = Callable[[StoredContext], Mutation]
"""Runs inside the write transaction (off the event loop); pure: no I/O, may raise ContextError."""


@dataclass(frozen=True)
class StoreStatus:
    backend: str
    location: str
    schema_version: int
    latest_schema_version: int
    pending_migrations: list[int]
    contexts: int
    last_sequence: int
    size_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict[str, Any])


class Store(Protocol):
    """What the service needs of a backend. Names are unique per namespace among live contexts.

    The maintenance commands need more: :class:`MaintenanceStore`."""

    backend: str

    async def open(self) -> None:
        """Connect, refuse a newer schema, apply pending migrations."""
        ...

    async def close(self) -> None: ...

    async def register(
        self,
        new: NewContext,
        *,
        actor: str,
        if_exists: Literal["error", "return"],
        audit: AuditNote | None = None,
    ) -> tuple[StoredContext, Change | None]:
        """Create a context at its first revision; with ``if_exists="return"`` an existing
        live context of that name is returned unchanged (and no change).

        Every committed write (here, in ``mutate``, ``unregister``, ``add_dead_letter`` and
        ``import_records``) appends its audit row in the same transaction when the store has
        an audit signer; ``audit`` adds the request id and a note to it."""
        ...

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
        """One CAS write: check the lease (``lease_token``, see :meth:`lease`) and
        ``expected_revision``, apply ``mutator``, commit. With ``event`` the event record commits
        in the same transaction; a repeated idempotency key raises :class:`EventAlreadyHandled`
        and writes nothing. ``inline(current)`` true: the mutator is cheap on that context (no schema
        to check, no plugin code, small inputs), and may run inside the transaction where the
        backend would otherwise run it in a worker thread."""
        ...

    async def lease(
        self,
        namespace: str,
        name: str,
        action: LeaseAction,
        *,
        token: int | None,
        holder: str,
        ttl_seconds: float,
        actor: str,
        audit: AuditNote | None = None,
    ) -> LeaseGrant:
        """Take (a new fencing token, one more than the last), renew (``token``: the live lease's)
        or release (``token``) the lease of a live context, with a change row (op ``lease_take``,
        ``lease_renew``, ``lease_release``; the revision does not move) and an audit row. While a
        lease is held, :meth:`mutate` and :meth:`unregister` need its token; a token that is not
        the live lease's is refused. A take is refused while agents wait in line for the lease
        (:meth:`take_in_turn`). Raises :class:`~groundhog_mcp.errors.LeasedError`."""
        ...

    async def take_in_turn(
        self,
        namespace: str,
        name: str,
        *,
        place: int | None,
        holder: str,
        ttl_seconds: float,
        wait_until: datetime,
        actor: str,
        audit: AuditNote | None = None,
        max_waiters: int,
        max_namespace_waiters: int,
    ) -> LeaseTurn:
        """One try of a waiter for the lease of ``name``, first come, first served across
        processes and instances: take it (as :meth:`lease` ``take``) when it is free and no live
        waiter came before ``place``; otherwise join the line (``place`` None; refused with
        :class:`~groundhog_mcp.errors.StoreBusyError` when ``max_waiters`` wait for the context
        or ``max_namespace_waiters`` in the namespace) or keep the place, alive until a short
        heartbeat deadline, never after ``wait_until``. Waiters past their deadline are skipped
        and their rows deleted, here, at use."""
        ...

    async def leave_line(self, namespace: str, place: int) -> None:
        """A waiter stops waiting: its place in line is deleted (nothing to do when it is gone)."""
        ...

    async def read_leases(self, context_ids: Sequence[ContextId]) -> list[Lease]:
        """The lease rows (held or not) of these contexts, in one query; a context never leased
        has none."""
        ...

    async def expire(self, namespace: str, name: str, *, actor: str, audit: AuditNote | None = None) -> Change | None:
        """Record the removal of context ``name`` if it expired and was not removed yet (op
        ``expired``, like an unregister); None when there was nothing to remove. Reads leave an
        expired context out whether or not its removal was recorded."""
        ...

    async def sweep(self, *, limit: int = 1000, actor: str = "expiry") -> list[Change]:
        """Record the removal of up to ``limit`` expired contexts of every namespace."""
        ...

    async def find_event(self, context_id: ContextId, idempotency_key: str) -> StoredEvent | None: ...

    async def add_dead_letter(
        self, letter: DeadLetter, *, actor: str = "local", audit: AuditNote | None = None
    ) -> DeadLetter:
        """Store a dead letter (``id`` is assigned; pass 0) or, with an existing ``id``, update its
        attempts and last error."""
        ...

    async def list_dead_letters(
        self, namespace: str, *, name: str | None, after_id: int, limit: int, include_replayed: bool
    ) -> list[DeadLetter]: ...

    async def get_dead_letter(self, namespace: str, letter_id: int) -> DeadLetter | None: ...

    async def dead_letter_name(self, namespace: str, letter_id: int) -> str | None:
        """The context name of a dead letter, nothing decoded: what a grant is checked on before
        the letter itself is read."""
        ...

    async def mark_replayed(self, letter_id: int, revision: int) -> None: ...

    async def context_counts(self, context_ids: list[ContextId]) -> dict[ContextId, tuple[int, int, int]]:
        """Per context: (state updates after registration, events handled, open dead letters)."""
        ...

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
        """Remove a live context (its lease with it: the fencing check applies, as in
        :meth:`mutate`); history stays unless ``purge`` (audit rows always stay)."""
        ...

    async def get(self, namespace: str, name: str) -> StoredContext | None: ...

    async def get_by_id(self, context_id: ContextId) -> StoredContext | None: ...

    async def locate(self, context_id: ContextId) -> tuple[str, str] | None:
        """``(namespace, name)`` of a live context, nothing decoded: what a grant is checked on
        before the context itself is read."""
        ...

    async def list(self, namespace: str, *, prefix: str, after: str | None, limit: int) -> list[StoredContext]:
        """Live contexts ordered by name, names > ``after``, starting with ``prefix``."""
        ...

    async def find(self, query: SearchQuery) -> list[tuple[StoredContext, tuple[Any, ...]]]:
        """Live contexts matching ``query`` in its order, each with its sort key (the next cursor)."""
        ...

    async def ensure_search_indexes(self, refs: tuple[JsonRef, ...] = ()) -> None:
        """Create the indexes of ``refs`` and of the configured ``search_indexes`` (if missing)."""
        ...

    async def read_revision(self, context_id: ContextId, revision: int) -> StoredRevision | int | None:
        """The snapshot, or the oldest available revision when this one was pruned, or None."""
        ...

    async def history(
        self,
        context_id: ContextId,
        *,
        before: int | None,
        limit: int,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[HistoryEntry]:
        """Newest first, revisions < ``before`` committed at or after ``since`` and before
        ``until``; each with the parents its lineage records."""
        ...

    async def revision_at(self, context_id: ContextId, at: datetime) -> StoredRevision | int | None:
        """The revision in force at ``at`` (the last one committed at or before it), or the
        oldest available revision when that one was pruned, or None when there is no history."""
        ...

    async def last_writes(self, namespace: str, context_ids: Sequence[ContextId]) -> dict[ContextId, HistoryEntry]:
        """The newest history entry of each of these contexts of ``namespace``, by id, in one
        query (``parents`` not read: empty); a context of another namespace has none."""
        ...

    async def lineage(self, namespace: str, context_ids: list[ContextId], *, limit: int) -> list[LineageEdge]:
        """The lineage rows of these contexts of ``namespace`` (at most ``limit``)."""
        ...

    async def changes_after(self, sequence: int, *, limit: int) -> list[Change]: ...

    async def poll_changes(self, sequence: int, *, limit: int, force: bool) -> list[Change]:
        """Changes after ``sequence``; without ``force`` a backend may answer ``[]`` cheaply when
        nothing was committed since the last poll (SQLite: ``PRAGMA data_version``)."""
        ...

    async def last_sequence(self) -> int: ...

    async def status(self) -> StoreStatus: ...

    async def append_audit(self, entry: AuditEntry) -> AuditRecord | None:
        """Append one audit row in its own transaction (a denied request); None when audit is off."""
        ...

    async def read_audit(self, query: AuditQuery) -> list[AuditRecord]:
        """Audit rows in sequence order (``newest_first``: descending); see ``AuditQuery.chain``."""
        ...

    async def audit_heads(self, namespace: str | None = None) -> list[AuditChainHead]:
        """The recorded head of every audit chain (the legacy chain first, when it has rows), or
        of ``namespace``'s chain only (position 0 when it has no row)."""
        ...

    async def namespace_summary(self, namespace: str, prefix: str) -> tuple[int, int]:
        """``(live contexts, last change sequence)`` of the contexts of ``namespace`` whose names
        start with ``prefix`` (the sequence is 0 when none ever changed)."""
        ...


class MaintenanceStore(Store, Protocol):
    """A :class:`Store` with what the maintenance commands add (``db migrate``, ``export``,
    ``import``, ``backup``, ``rotate-key``): every backend is one; the service never needs it."""

    async def migrate(self) -> list[int]:
        """Apply pending schema migrations; returns the versions applied."""
        ...

    def export_records(self) -> AsyncIterator[JSONObject]:
        """Every context and revision snapshot as JSON records (for ``export``), read in pages."""
        ...

    async def import_records(self, records: Iterable[JSONObject], *, actor: str = "local") -> int:
        """Load what ``export_records`` produced, in one transaction; returns contexts imported.
        Audit rows are never imported (nobody can forge a chain): the import is one audit row."""
        ...

    async def backup(self, destination: Path, *, force: bool = False) -> None:
        """An online, consistent copy of the database in a new owner-only file; an existing
        ``destination`` is refused unless ``force`` (then replaced, a symlink never followed)."""
        ...

    async def rotate_keys(
        self,
        *,
        batch_size: int = 500,
        progress: Callable[[RotationProgress], None] | None = None,
        max_batches: int | None = None,
    ) -> bool:
        """Rewrite every sealed value not under the cipher's current key, a batch per transaction;
        True when done, False when ``max_batches`` stopped the run first."""
        ...


@dataclass(frozen=True)
class RotationProgress:
    """One committed ``rotate-key`` batch."""

    column: str
    done: int  # rows of this column rewritten so far in this run
    pending: int  # rows of this column that needed it when this run started
    batches: int  # batches committed so far in this run (all columns)


@dataclass(frozen=True)
class Retention:
    """How much history a context keeps: the last ``keep_revisions`` revisions (0 = all) and, with
    ``keep_days``, none older than that. The current revision is always kept. Applied in the write
    path every ``prune_every`` revisions, by key range: never a full scan."""

    keep_revisions: int = 100
    keep_days: float | None = None
    prune_every: int = 10

    def for_context(self, settings: JSONObject) -> Retention:
        """A context's own ``keep_revisions`` / ``keep_days`` settings override the server's."""
        keep_revisions = settings.get("keep_revisions", self.keep_revisions)
        keep_days = settings.get("keep_days", self.keep_days)
        return Retention(
            keep_revisions=keep_revisions if isinstance(keep_revisions, int) else self.keep_revisions,
            keep_days=float(keep_days) if isinstance(keep_days, int | float) else self.keep_days,
            prune_every=self.prune_every,
        )

    def due(self, revision: int) -> bool:
        return revision % self.prune_every == 0


@runtime_checkable
class ChangeAnnouncer(Protocol):
    """What a backend that hears of commits by every instance adds to :class:`Store`
    (PostgreSQL: ``LISTEN``/``NOTIFY``). Optional: the change feed polls stores without it.

    An announcement only says "read the change feed now": the feed still reads from its last
    ``sequence``, so a lost announcement costs at most one fallback poll, never a change.
    """

    @property
    def announcing(self) -> bool:
        """True while announcements arrive; the feed then polls at its slow fallback rate."""
        ...

    async def wait_for_changes(self, seen: int) -> int:
        """Wait until there have been more than ``seen`` announcements; return how many (bound the
        wait with ``asyncio.timeout``). A (re)established channel counts as one: commits made
        while it was down were not announced."""
        ...


FEED_PATCH_MAX_BYTES = 2048
FEED_PATCH_MAX_OPS = 100


def feed_patch(patch: list[JSONObject] | None) -> tuple[str | None, int]:
    """The diff a change row keeps, as JSON text: whole up to 2 KB; beyond that only each
    operation's ``op`` and ``path`` (the first 100), so the change feed stays small (values live
    in the history snapshots: ``diff_states``). With it, the size of the whole diff in bytes:
    the diff is serialised once per write."""
    if patch is None:
        return None, 0
    text = dumps(patch)
    size = len(text.encode("utf-8"))
    if size <= FEED_PATCH_MAX_BYTES:
        return text, size
    return dumps([{"op": op.get("op"), "path": op.get("path")} for op in patch[:FEED_PATCH_MAX_OPS]]), size


# -- the audit log ------------------------------------------------------------------------------

AUDIT_OK = "ok"
AUDIT_DENIED = "denied"


@dataclass(frozen=True)
class AuditNote:
    """What the service adds to the audit row of a write: the request it served (the MCP request
    id) and a short note (``"merge_patch"``, ``"dead letter #3 replayed"``). Never state contents."""

    request_id: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One audit row before it is chained: who did what to which context, and the outcome."""

    principal: str
    namespace: str
    operation: str
    outcome: str
    context: str | None = None
    context_id: ContextId | None = None
    revision: int | None = None
    change_sequence: int | None = None
    request_id: str | None = None
    detail: str | None = None

    @classmethod
    def of_change(cls, change: Change, note: AuditNote | None) -> AuditEntry:
        """The row of a committed change."""
        return cls(
            principal=change.actor,
            namespace=change.namespace,
            operation=change.op,
            outcome=AUDIT_OK,
            context=change.name,
            context_id=change.context_id,
            revision=change.revision,
            change_sequence=change.sequence,
            request_id=note.request_id if note is not None else None,
            detail=note.detail if note is not None else None,
        )

    @classmethod
    def of_dead_letter(cls, letter: DeadLetter, actor: str, note: AuditNote | None) -> AuditEntry:
        """The row of a dead letter written or updated (its payload is not in it)."""
        what = f"event {letter.type!r} failed {letter.attempts} time(s): dead letter #{letter.id}"
        return cls(
            principal=actor,
            namespace=letter.namespace,
            operation="dead_letter",
            outcome=AUDIT_OK,
            context=letter.name,
            context_id=letter.context_id,
            request_id=note.request_id if note is not None else None,
            detail=what if note is None or note.detail is None else f"{note.detail}; {what}",
        )


class AuditSigner(Protocol):
    """Signs audit rows (implemented by :class:`groundhog_mcp.security.audit.AuditKey`; injected
    into a store, which has no business knowing keys). A store without one writes no audit rows."""

    @property
    def key_id(self) -> str:
        """A short public fingerprint of the key, stored with every row it signs."""
        ...

    def sign(self, content: Mapping[str, AuditValue], previous: str) -> str:
        """The row's HMAC (hex) over ``content`` and the previous row's HMAC."""
        ...


@dataclass(frozen=True)
class AuditQuery:
    """A page of audit rows. ``namespace`` None: every namespace (maintenance commands only).
    ``after`` / ``before`` bound the sequence (exclusive); ``since`` / ``until`` the time
    (inclusive / exclusive).

    ``chain``: the rows of ``namespace``'s HMAC chain in chain order, ``after`` / ``before``
    bounding the position; with ``namespace`` None, the legacy chain (rows written before
    schema 10, of every namespace) in sequence order."""

    namespace: str | None = None
    context: str | None = None
    prefix: str | None = None
    principal: str | None = None
    operation: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    after: int | None = None
    before: int | None = None
    newest_first: bool = False
    limit: int = 100
    chain: bool = False


@dataclass(frozen=True)
class AuditChainHead:
    """The last row of one audit chain as the store records it: ``namespace`` None is the
    legacy chain (closed at schema 10), ``""`` the store-wide chain. ``position`` 0: no row."""

    namespace: str | None
    position: int
    hmac: str


# -- encryption at rest -----------------------------------------------------------------------

SEALED_MAGIC = b"GHE1"
"""A sealed record starts with these 4 bytes, then the 4-byte key id, then what the cipher wrote.
Plaintext columns are JSON text or zlib data (``0x78``): never confused with a sealed blob."""


class RecordCipher(Protocol):
    """Seals and opens record contents (encryption at rest); implemented in ``security.crypto``.

    A sealed blob is ``SEALED_MAGIC + bytes.fromhex(key_id) + …``: the store reads the key id of a
    row without opening it (start-up checks, ``rotate-key``). ``aad`` (see :func:`record_aad`)
    binds a blob to its row: opened under another row's ``aad`` it fails.
    """

    @property
    def key_id(self) -> str | None:
        """The key new records are sealed with (8 hex digits); None: new records stay plaintext."""
        ...

    @property
    def readable_key_ids(self) -> frozenset[str]:
        """Every key id this cipher can open (the current key and the old ones)."""
        ...

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt under the current key (fresh random nonce)."""
        ...

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt a sealed blob; raises ``ValueError`` naming the problem (unknown key id, failed
        authentication) without any of the contents."""
        ...


def sealed_key_id(value: object) -> str | None:
    """The key id of a sealed column value, or None for a plaintext one."""
    if isinstance(value, bytes) and len(value) >= 8 and value[:4] == SEALED_MAGIC:
        return value[4:8].hex()
    return None


def record_aad(column: str, namespace: str, context_id: object, number: int) -> bytes:
    """The associated data of one sealed column value: the column (``table.column``), the
    context's namespace and id, and the row's revision (a dead letter: its id). A blob copied to
    another column, context, namespace or revision fails to open."""
    return f"groundhog-mcp/1\x00{column}\x00{namespace}\x00{context_id}\x00{number}".encode()


def key_mismatch(cipher: RecordCipher | None, used: Iterable[str], where: str, unchanged: str) -> None:
    """Raise :class:`EncryptionKeyError` when records of the database ``where`` are sealed under
    key ids (``used``) that ``cipher`` cannot open; ``unchanged`` says what was left untouched."""
    readable = cipher.readable_key_ids if cipher is not None else frozenset[str]()
    missing = [key_id for key_id in used if key_id not in readable]
    if not missing:
        return
    ids = f"key id{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    if cipher is None:
        raise EncryptionKeyError(
            f"encryption: the database {where} is encrypted ({ids}) and no encryption key is configured; "
            f"set GROUNDHOG_ENCRYPTION_KEY or encryption_key_file. {unchanged}"
        )
    current = cipher.key_id
    configured = f"the configured key has id {current}" if current else "no current key is configured"
    old = sorted(readable - {current} if current else readable)
    if old:
        configured += f" (old keys: {', '.join(old)})"
    raise EncryptionKeyError(
        f"encryption: the database {where} was encrypted with {ids}, and {configured}; configure that key "
        f"(while rotate-key has not finished, list the previous key in GROUNDHOG_ENCRYPTION_OLD_KEYS). {unchanged}"
    )
