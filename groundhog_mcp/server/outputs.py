"""Structured tool outputs (pydantic), one shape per tool result."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from groundhog_mcp.models import Change, ContextState, HistoryEntry, Parent, dumps, format_timestamp
from groundhog_mcp.service import ContextMetrics, EventResult, WriteResult
from groundhog_mcp.service.migration import ContextMigration, MigrationReport
from groundhog_mcp.service.reading import TooLarge
from groundhog_mcp.service.types import AuditRecord, DeadLetter, Lease, StoredContext

__all__ = [
    "ContextOut",
    "ContextSummary",
    "DiffOut",
    "HistoryOut",
    "LeaseOut",
    "ListOut",
    "MigrateOut",
    "OutputModel",
    "ParentOut",
    "RevisionOut",
    "StateOut",
    "StateValue",
    "UnregisterOut",
    "ValidationOut",
    "WriteOut",
]


ANSWER_PATCH_MAX_BYTES = 64 * 1024


def answer_patch(patch: list[dict[str, Any]], size: int | None = None) -> tuple[list[dict[str, Any]], bool]:
    """A write's diff as returned to the client: whole up to 64 KiB, else its ops and paths only
    (a replaced megabyte state must not come back as a megabyte answer). ``size``: its serialised
    size, when known (the store measured a committed change's)."""
    if (size if size is not None else len(dumps(patch).encode("utf-8"))) <= ANSWER_PATCH_MAX_BYTES:
        return patch, False
    return [{"op": op.get("op"), "path": op.get("path")} for op in patch[:1000]], True


class OutputModel(BaseModel):
    """A tool result's model. Its validator and serializer are built at its first use, not at
    import: a server lists its tools from their published schemas (server/tool_schemas.py) and
    builds a tool's models at its first call, so most of these are never needed at start-up."""

    model_config = ConfigDict(defer_build=True)


class StateValue(OutputModel):
    data: dict[str, Any]
    metadata: dict[str, Any]
    timestamp: str = Field(description="RFC 3339 UTC time of the write")
    version: str = Field(description="state format version (semver)")

    @classmethod
    def of(cls, state: ContextState) -> StateValue:
        # Already-validated values: skip pydantic's walk (and copy) of the whole state.
        return cls.model_construct(
            data=state.data,
            metadata=state.metadata,
            timestamp=format_timestamp(state.timestamp),
            version=state.version,
        )


class ContextSummary(OutputModel):
    id: str
    name: str
    version: str = Field(description="version of the context's definition (semver)")
    revision: int
    state_size: int = Field(description="serialised state size in bytes")
    updated_at: str


class ParentOut(OutputModel):
    kind: str = Field(description="fork: copied from this revision; merge: took this revision in")
    name: str
    revision: int

    @classmethod
    def of(cls, parent: Parent) -> ParentOut:
        return cls(kind=parent.kind, name=parent.name, revision=parent.revision)


class LeaseOut(OutputModel):
    name: str
    token: int = Field(description="fencing token: pass it as lease_token on your writes, and to renew/release")
    held: bool = Field(description="false after a release")
    holder: str | None = None
    expires_at: str | None = Field(default=None, description="renew before this (RFC 3339 UTC)")
    sequence: int | None = Field(default=None, description="change-feed sequence of this lease action")

    @classmethod
    def of(cls, name: str, lease: Lease, *, held: bool = True, sequence: int | None = None) -> LeaseOut:
        return cls(
            name=name,
            token=lease.token,
            held=held,
            holder=lease.holder,
            expires_at=format_timestamp(lease.expires_at) if lease.expires_at is not None else None,
            sequence=sequence,
        )


class ContextOut(ContextSummary):
    namespace: str
    metadata: dict[str, Any]
    settings: dict[str, Any]
    json_schema: dict[str, Any] | None = Field(default=None, description="JSON Schema the state data must satisfy")
    created_at: str
    state_version: str = Field(description="format version of the current state")
    created: bool | None = Field(
        default=None, description="register_context: false when an existing context was returned"
    )
    sequence: int | None = Field(default=None, description="change-feed sequence of the registration")
    forked_from: ParentOut | None = Field(default=None, description="the context and revision this one was forked from")
    lease: LeaseOut | None = Field(default=None, description="the lease held on the context now, if any")
    differs: list[str] | None = Field(
        default=None,
        description="register_context with if_exists='return': the parts of the definition you gave that differ "
        "from the stored one (unchanged; update_context changes them)",
    )

    @classmethod
    def of(
        cls,
        ctx: StoredContext,
        *,
        created: bool | None = None,
        sequence: int | None = None,
        forked_from: Parent | None = None,
        lease: Lease | None = None,
        differs: list[str] | None = None,
    ) -> ContextOut:
        return cls(
            id=str(ctx.id),
            name=ctx.name,
            version=ctx.version,
            revision=ctx.revision,
            state_size=ctx.state_size,
            updated_at=format_timestamp(ctx.updated_at),
            namespace=ctx.namespace,
            metadata=ctx.metadata,
            settings=ctx.settings,
            json_schema=ctx.schema,
            created_at=format_timestamp(ctx.created_at),
            state_version=ctx.state.version,
            created=created,
            sequence=sequence,
            forked_from=ParentOut.of(forked_from) if forked_from is not None else None,
            lease=LeaseOut.of(ctx.name, lease) if lease is not None else None,
            differs=differs,
        )


def summary_of(ctx: StoredContext) -> ContextSummary:
    return ContextSummary(
        id=str(ctx.id),
        name=ctx.name,
        version=ctx.version,
        revision=ctx.revision,
        state_size=ctx.state_size,
        updated_at=format_timestamp(ctx.updated_at),
    )


class ListOut(OutputModel):
    contexts: list[ContextSummary]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last page")


class PartOut(OutputModel):
    path: str = Field(description="JSON Pointer to pass as path")
    type: str
    bytes: int


class TooLargeOut(OutputModel):
    bytes: int = Field(description="size of the value that was not returned")
    limit: int = Field(description="the server's read limit (max_read_bytes)")
    parts: list[PartOut] = Field(description="its children with their sizes (first 50)")
    more_parts: int = Field(description="children not listed")
    hint: str

    @classmethod
    def of(cls, too_large: TooLarge, hint: str) -> TooLargeOut:
        return cls(
            bytes=too_large.bytes,
            limit=too_large.limit,
            parts=[PartOut(**p) for p in too_large.parts],
            more_parts=too_large.more_parts,
            hint=too_large.hint(hint),
        )


def _absent(value: object) -> bool:
    return value is None


def _optional(description: str) -> Any:
    """A field left out of the answer when it does not apply (None). The output schema is the
    same (optional, default null); a read answers only what applies: a client validating the
    answer against the schema checks each null against every branch of its ``anyOf``, which cost
    a 1 KB read ~0.14 ms in the SDK's client (benchmarks/README.md)."""
    return Field(default=None, description=description, exclude_if=_absent)


class StateOut(OutputModel):
    name: str
    revision: int = Field(description="the revision returned")
    current_revision: int
    path: str | None = _optional("the JSON Pointer read, when one was given")
    value: Any = Field(
        default=None,
        description="the value at path (with offset/limit: that page of the array), or with fields a sparse copy "
        "of the data holding only them",
    )
    length: int | None = _optional("with offset/limit: the array's length")
    offset: int | None = _optional("with offset/limit: the index of value's first item")
    missing: list[str] | None = _optional("with fields: those the data does not have")
    state: StateValue | None = _optional("the whole state (when no path was given)")
    too_large: TooLargeOut | None = _optional(
        "set instead of value/state when it exceeds the read limit: read its parts by path"
    )
    upcast_from: str | None = _optional(
        "set when the stored state has an older format version: it was upcast on read from this "
        "version (stored as is; migrate_context rewrites it)"
    )
    as_of: str | None = _optional("the time asked for: revision is the one in force then")


class WriteOut(OutputModel):
    name: str
    revision: int = Field(description="the new revision; pass it as expected_revision on your next write")
    previous_revision: int | None
    sequence: int = Field(description="store-wide change sequence of this write")
    timestamp: str
    op: str
    patch: list[dict[str, Any]] = Field(description="RFC 6902 diff applied, from the previous revision")
    patch_truncated: bool = Field(
        default=False, description="true when the diff was too large to return: ops and paths only; see diff_states"
    )

    @classmethod
    def of(cls, result: WriteResult) -> WriteOut:
        patch, truncated = answer_patch(result.change.patch or [], result.change.patch_bytes)
        # Values the server produced itself: no validation walk over the diff.
        return cls.model_construct(
            name=result.context.name,
            revision=result.context.revision,
            previous_revision=result.previous_revision,
            sequence=result.change.sequence,
            timestamp=format_timestamp(result.change.timestamp),
            op=result.change.op,
            patch=patch,
            patch_truncated=truncated,
        )


class UnregisterOut(OutputModel):
    name: str
    unregistered: Literal[True] = True
    revision: int = Field(description="revision of the unregistration (never reused by this name)")
    sequence: int
    purged: bool


class ValidationIssueOut(OutputModel):
    pointer: str = Field(description="JSON Pointer into the state document (/data/..., /metadata/...)")
    message: str


class ValidationOut(OutputModel):
    name: str
    valid: bool
    errors: list[ValidationIssueOut]


class RevisionOut(OutputModel):
    revision: int
    sequence: int
    op: str
    actor: str
    timestamp: str
    size: int
    parents: list[ParentOut] | None = Field(default=None, description="what this revision was forked or merged from")

    @classmethod
    def of(cls, entry: HistoryEntry) -> RevisionOut:
        return cls(
            revision=entry.revision,
            sequence=entry.sequence,
            op=entry.op,
            actor=entry.actor,
            timestamp=format_timestamp(entry.timestamp),
            size=entry.size,
            parents=[ParentOut.of(p) for p in entry.parents] or None,
        )


class HistoryOut(OutputModel):
    name: str
    current_revision: int
    revisions: list[RevisionOut] = Field(description="newest first")
    next_before: int | None = Field(description="pass as before for older revisions; null when none are left")


class DiffOut(OutputModel):
    name: str
    from_revision: int
    to_revision: int
    patch: list[dict[str, Any]] = Field(description="RFC 6902 operations turning from_revision into to_revision")


class ChangeOut(OutputModel):
    sequence: int = Field(description="store-wide change sequence")
    context: str
    revision: int
    op: str
    actor: str
    timestamp: str
    paths: list[str] = Field(description="JSON Pointers the change touched (first 20)")

    @classmethod
    def of(cls, change: Change) -> ChangeOut:
        paths = [str(op.get("path", "")) for op in (change.patch or [])]
        return cls(
            sequence=change.sequence,
            context=change.name,
            revision=change.revision,
            op=change.op,
            actor=change.actor,
            timestamp=format_timestamp(change.timestamp),
            paths=paths[:20],
        )


class ChangesOut(OutputModel):
    changes: list[ChangeOut]
    cursor: int = Field(description="pass as after_sequence on your next call")
    timed_out: bool = Field(description="true when the timeout passed with no change")


class EventOut(OutputModel):
    name: str
    type: str
    revision: int = Field(description="the revision the event produced (for a repeat: the first one)")
    sequence: int
    duplicate: bool = Field(description="true when this idempotency_key was already handled: nothing new applied")
    patch: list[dict[str, Any]] = Field(description="RFC 6902 diff the event applied (empty for a repeat)")

    @classmethod
    def of(cls, result: EventResult) -> EventOut:
        return cls(
            name=result.name,
            type=result.type,
            revision=result.revision,
            sequence=result.sequence,
            duplicate=result.duplicate,
            patch=answer_patch(result.patch)[0],
        )


class DeadLetterOut(OutputModel):
    id: int
    context: str
    type: str
    payload: dict[str, Any]
    idempotency_key: str | None
    attempts: int
    last_error: str
    created_at: str
    replayed_at: str | None
    replay_revision: int | None

    @classmethod
    def of(cls, letter: DeadLetter) -> DeadLetterOut:
        return cls(
            id=letter.id,
            context=letter.name,
            type=letter.type,
            payload=letter.payload,
            idempotency_key=letter.idempotency_key,
            attempts=letter.attempts,
            last_error=letter.last_error,
            created_at=format_timestamp(letter.created_at),
            replayed_at=format_timestamp(letter.replayed_at) if letter.replayed_at else None,
            replay_revision=letter.replay_revision,
        )


class DeadLettersOut(OutputModel):
    dead_letters: list[DeadLetterOut]
    next_after_id: int | None = Field(description="pass as after_id for the next page; null on the last page")


class LatencyOut(OutputModel):
    count: int
    average_ms: float
    p95_ms: float


class ContextMetricsOut(OutputModel):
    name: str
    revision: int
    state_updates: int = Field(description="committed writes after registration (stored: survives restarts)")
    events_handled: int
    dead_letters: int = Field(description="open (not yet replayed) dead letters")
    state_size: int = Field(description="bytes")
    write_latency: LatencyOut = Field(description="this server process, last 1000 writes")
    handler_latency: LatencyOut
    errors: dict[str, int] = Field(description="errors by class in this server process")


class ServerMetricsOut(OutputModel):
    uptime_seconds: float
    rss_bytes: int | None
    database_bytes: int | None
    backend: str
    contexts: int
    last_sequence: int
    open_subscriptions: int
    errors: dict[str, int]
    denied_requests: dict[str, dict[str, int]] = Field(
        default_factory=dict[str, dict[str, int]],
        description="requests refused for a missing grant, by principal and operation (exact, this process): "
        "your own; every principal's of your namespace for an admin of all of it",
    )


class MetricsOut(OutputModel):
    server: ServerMetricsOut
    contexts: list[ContextMetricsOut]

    @classmethod
    def of(cls, server: dict[str, Any], contexts: list[ContextMetrics]) -> MetricsOut:
        return cls(
            server=ServerMetricsOut(**server),
            contexts=[
                ContextMetricsOut(
                    name=c.name,
                    revision=c.revision,
                    state_updates=c.state_updates,
                    events_handled=c.event_count,
                    dead_letters=c.dead_letters,
                    state_size=c.state_size,
                    write_latency=LatencyOut(**c.write_latency.__dict__),
                    handler_latency=LatencyOut(**c.handler_latency.__dict__),
                    errors=c.errors,
                )
                for c in contexts
            ],
        )


class AuditEntryOut(OutputModel):
    """One audit row: who did what to which context, when, and the outcome. Never state contents."""

    sequence: int = Field(description="position in the audit log (the HMAC chain's order)")
    timestamp: str
    principal: str
    operation: str = Field(
        description="register, update, rollback, merge, event, migrate, unregister, dead_letter, import; "
        "for a denied request, the operation refused"
    )
    outcome: Literal["ok", "denied"] | str
    context: str | None
    revision: int | None = Field(description="the revision the write produced")
    change_sequence: int | None = Field(description="the change-feed sequence of the write")
    request_id: str | None = Field(description="the MCP request that made it")
    detail: str | None

    @classmethod
    def of(cls, record: AuditRecord) -> AuditEntryOut:
        return cls(
            sequence=record.sequence,
            timestamp=format_timestamp(record.timestamp),
            principal=record.principal,
            operation=record.operation,
            outcome=record.outcome,
            context=record.context,
            revision=record.revision,
            change_sequence=record.change_sequence,
            request_id=record.request_id,
            detail=record.detail,
        )


class AuditLogOut(OutputModel):
    namespace: str
    entries: list[AuditEntryOut]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last page")


# -- migrate_context -----------------------------------------------------------------------------

MIGRATIONS_LISTED = 100


class ContextMigrationOut(OutputModel):
    name: str
    from_version: str = Field(description="the stored state's format version before")
    to_version: str = Field(description="the format version after")
    steps: list[str] = Field(description="upcasters run, as 'from -> to'")
    revision: int = Field(description="the new revision (dry run: the revision checked)")
    previous_revision: int | None = Field(description="the revision before (null in a dry run)")
    patch: list[dict[str, Any]] = Field(description="RFC 6902 diff of the state document (/data, /metadata, /version)")
    patch_truncated: bool = Field(default=False, description="true when the diff was too large: ops and paths only")

    @classmethod
    def of(cls, migration: ContextMigration) -> ContextMigrationOut:
        patch, truncated = answer_patch(migration.patch)
        return cls.model_construct(
            name=migration.name,
            from_version=migration.from_version,
            to_version=migration.to_version,
            steps=migration.steps,
            revision=migration.revision,
            previous_revision=migration.previous_revision,
            patch=patch,
            patch_truncated=truncated,
        )


class MigrateOut(OutputModel):
    dry_run: bool
    to_version: str | None = Field(description="the target asked for; null: each context's current format version")
    matched: int = Field(description="contexts selected (by name or prefix)")
    migrated: int = Field(description="contexts rewritten (dry run: that would be rewritten)")
    unchanged: int = Field(description="contexts already at the target version")
    without_format: int = Field(description="contexts that declare no state format (left alone)")
    contexts: list[ContextMigrationOut] = Field(
        description=f"the contexts rewritten (dry run: to be rewritten), the first {MIGRATIONS_LISTED}"
    )
    more_contexts: int = Field(default=0, description="how many more were rewritten than listed")

    @classmethod
    def of(cls, report: MigrationReport) -> MigrateOut:
        return cls(
            dry_run=report.dry_run,
            to_version=report.to_version,
            matched=report.matched,
            migrated=report.migrated,
            unchanged=report.unchanged,
            without_format=report.without_format,
            contexts=[ContextMigrationOut.of(m) for m in report.contexts[:MIGRATIONS_LISTED]],
            more_contexts=max(0, len(report.contexts) - MIGRATIONS_LISTED),
        )
