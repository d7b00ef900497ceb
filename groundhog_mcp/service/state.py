"""The state manager: every read and write of context state goes through here.

A write follows the specification: validate → prepare → store (one transaction, with
the ``expected_revision`` check) → notify (after commit, on the change bus).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import dataclasses
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog

from groundhog_mcp.errors import (
    AccessDeniedError,
    CompactedError,
    ConflictError,
    ContextError,
    EventHandlingError,
    NotFoundError,
    StateUpdateError,
    StateValidationError,
    ValidationIssue,
)
from groundhog_mcp.models import (
    Change,
    ContextId,
    ContextState,
    HistoryEntry,
    JSONObject,
    Principal,
    Right,
    dumps,
    json_diff,
    utcnow,
)
from groundhog_mcp.service import leases
from groundhog_mcp.service.audit import (
    AuditPage,
    DenialLog,
    current_operation,
    current_request_id,
    decode_audit_cursor,
    encode_audit_cursor,
)
from groundhog_mcp.service.bus import ChangeBus, Resync
from groundhog_mcp.service.events import Event, EventHandler, HandlerFailure, handler_from_spec, parse_handler_specs
from groundhog_mcp.service.expiry import expire_if_due, resolve_expiry_settings
from groundhog_mcp.service.feed import ChangeFeed
from groundhog_mcp.service.leases import LeaseQueues, presented_lease
from groundhog_mcp.service.merge import (
    ContextRef,
    MergeOutcome,
    MergeResult,
    MergeSource,
    OnConflict,
    SourceInfo,
    Strategy,
    check_merge_arguments,
    compute_merge,
    parse_source,
)
from groundhog_mcp.service.metrics import ContextMetrics, MetricsRecorder, process_rss_bytes
from groundhog_mcp.service.migration import (
    MigrationReport,
    Progress,
    UpcastCache,
    dry_run_chains,
    format_of,
    migrate_contexts,
    upcast,
)
from groundhog_mcp.service.patching import apply_json_patch, merge_patch
from groundhog_mcp.service.validation import (
    Limits,
    check_name,
    check_schema_definition,
    check_semver,
    inspect_json,
    inspect_state,
    raise_if_invalid,
    schema_issues,
)
from groundhog_mcp.store.base import (
    AUDIT_DENIED,
    AuditEntry,
    AuditNote,
    AuditQuery,
    DeadLetter,
    EventAlreadyHandled,
    EventRecord,
    Lease,
    LeaseGrant,
    Mutation,
    NewContext,
    Store,
    StoredContext,
)
from groundhog_mcp.store.sqlite import SQLiteStore

__all__ = ["MAX_WAIT_SECONDS", "ContextPage", "EventResult", "StateManager", "WriteResult"]

_T = TypeVar("_T")

_log = structlog.get_logger("groundhog_mcp.state")

MAX_WAIT_SECONDS = 60.0
_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 1.0
_MAX_EVENT_RACES = 50
_SCAN_PAGE = 500
_MAX_SCAN_PAGES = 20


@dataclass(frozen=True)
class WriteResult:
    """A committed write: the context after it, and its change-feed entry."""

    context: StoredContext
    change: Change
    previous_revision: int | None


@dataclass(frozen=True)
class EventResult:
    """What handling an event did: the revision it produced (or, for a repeat, the first one)."""

    name: str
    type: str
    revision: int
    sequence: int
    patch: list[JSONObject]
    duplicate: bool = False


@dataclass(frozen=True)
class ContextPage:
    contexts: list[StoredContext]
    next_cursor: str | None


def _encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        name = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        check_name(name)
    except (binascii.Error, UnicodeDecodeError, ValueError, StateValidationError):
        raise StateValidationError(
            [ValidationIssue("", "not a cursor this server issued; pass next_cursor from a previous page")],
            field="cursor",
        ) from None
    return name


class StateManager:
    """Durable, versioned context state over a :class:`~groundhog_mcp.store.base.Store`.

    Open one with ``async with StateManager.open(path) as manager`` (SQLite), or build it
    over any store and call :meth:`start` / :meth:`close`.
    """

    def __init__(
        self,
        store: Store,
        *,
        limits: Limits | None = None,
        principal: Principal | None = None,
        bus: ChangeBus | None = None,
        poll_interval: float = 0.05,
        event_max_attempts: int = 3,
    ) -> None:
        self.store = store
        self.limits = limits or Limits()
        self.principal = principal or Principal()
        self.bus = bus or ChangeBus()
        self.feed = ChangeFeed(store, self.bus, interval=poll_interval)
        self.event_max_attempts = event_max_attempts
        self.metrics = MetricsRecorder()
        self.upcasts = UpcastCache()
        self.denials = DenialLog()
        self.denial_summary_interval = 5.0  # seconds between looks for counts whose minute has passed
        self.lease_queues = LeaseQueues()
        self._pending: set[asyncio.Task[Any]] = set()
        self._denial_flusher: asyncio.Task[None] | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, database: str | Path, **kwargs: Any) -> AsyncGenerator[StateManager]:
        """A manager over a SQLite file (created if missing), closed on exit."""
        manager = cls(SQLiteStore(database), **kwargs)
        await manager.start()
        try:
            yield manager
        finally:
            await manager.close()

    async def start(self) -> None:
        """Open the store and follow its change feed from the current sequence."""
        await self.store.open()
        self.bus.last_sequence = await self.store.last_sequence()
        await self.feed.start(self.bus.last_sequence)
        self._denial_flusher = asyncio.create_task(self._flush_denial_summaries_forever())

    async def close(self) -> None:
        if self._denial_flusher is not None:
            self._denial_flusher.cancel()
            await asyncio.gather(self._denial_flusher, return_exceptions=True)
            self._denial_flusher = None
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.flush_denials()  # a clean shutdown loses no count
        await self.feed.stop()
        await self.store.close()

    # -- the specification's API ------------------------------------------------------------

    async def save_state(
        self, context_id: ContextId, state: ContextState, *, expected_revision: int | None = None
    ) -> WriteResult:
        """Store ``state`` as the context's new revision, exactly as given.

        A context id not seen before is created (named after the id), as the
        specification's ``save_state`` on a fresh ``ContextId`` expects.
        """
        await self.validate_state(state)
        located = await self.store.locate(context_id)  # the name only: nothing decoded before the grant check
        await self.authorize("write", located[1] if located is not None else str(context_id))
        if located is None:
            created = await self._register(
                NewContext(
                    id=context_id,
                    namespace=self.principal.namespace,
                    name=str(context_id),
                    version="1.0.0",
                    metadata={},
                    settings={},
                    schema=None,
                    handlers={},
                    state=state,
                ),
                if_exists="error",
            )
            assert isinstance(created, WriteResult)  # if_exists="error" never returns an existing context
            return created

        def replace_state(current: StoredContext) -> Mutation:
            self._check_written(state, current)
            return Mutation(state, json_diff(current.state.document(), state.document()))

        return await self._mutate(located[1], expected_revision, replace_state)

    async def load_state(self, context_id: ContextId) -> ContextState:
        missing = f"context_id: no context with id {context_id}"
        # The name first (nothing decoded), the grant on it, and only then the context itself.
        located = await self.store.locate(context_id)
        if located is None or located[0] != self.principal.namespace:
            raise NotFoundError(missing)
        await self.authorize("read", located[1], missing=missing, itemize=False)
        stored = await self.store.get_by_id(context_id)
        if stored is None:  # unregistered in between
            raise NotFoundError(missing)
        return await self._upcast_off_loop(stored, stored.state)

    async def merge_states(
        self,
        states: Sequence[ContextState],
        *,
        strategy: Strategy = "ordered",
        base: ContextState | None = None,
        reducers: Mapping[str, str] | None = None,
        on_conflict: OnConflict = "fail",
    ) -> ContextState:
        """Merge 2+ states; by default an RFC 7396 fold in order (later wins), metadata the same way.

        ``strategy="three_way"`` needs ``base``; ``reducers`` maps JSON Pointers into the state
        document (``/data/tags``) to ``append|union|sum|max|min|last``; ``on_conflict`` is
        ``fail|ours|theirs`` (see :mod:`groundhog_mcp.service.merge`). For conflicts, provenance,
        inputs named by context and revision, or writing the result, use :meth:`merge`.
        """
        result = await asyncio.to_thread(
            compute_merge, states, strategy=strategy, base=base, reducers=reducers, on_conflict=on_conflict
        )
        return result.state

    async def validate_state(self, state: ContextState, *, schema: JSONObject | None = None) -> None:
        """Raise :class:`StateValidationError` listing every problem; return None if valid."""
        if schema is not None:
            await asyncio.to_thread(check_schema_definition, schema)
        await asyncio.to_thread(self._raise_if_invalid_state, state, schema)

    def check_state(self, state: ContextState, schema: JSONObject | None = None) -> list[ValidationIssue]:
        return inspect_state(state, self.limits, schema)

    # -- name-addressed operations (what the MCP tools call) --------------------------------

    async def register(
        self,
        name: str,
        *,
        version: str = "1.0.0",
        state: ContextState | None = None,
        metadata: JSONObject | None = None,
        settings: JSONObject | None = None,
        schema: JSONObject | None = None,
        handlers: JSONObject | None = None,
        if_exists: Literal["error", "return"] = "error",
        context_id: ContextId | None = None,
    ) -> WriteResult | StoredContext:
        """Create a context; with ``if_exists="return"`` an existing one is returned as is."""
        check_name(name)
        await self.authorize("write", name)
        check_semver(version)
        metadata = metadata or {}
        settings = resolve_expiry_settings(settings or {})

        def checked_state() -> ContextState:
            # Schemas, formats and states from a client: checked in a worker thread, never on the loop.
            raise_if_invalid(inspect_json(metadata, self.limits), "metadata")
            raise_if_invalid(inspect_json(settings, self.limits), "settings")
            _check_retention_settings(settings)
            state_format = format_of(settings)  # parsed and checked once per distinct declaration
            if schema is not None:
                raise_if_invalid(inspect_json(schema, self.limits), "schema")
                check_schema_definition(schema)
            if handlers:
                raise_if_invalid(inspect_json(handlers, self.limits), "event_handlers")
                parse_handler_specs(handlers)
            initial = state or ContextState(version=state_format.version if state_format else "1.0.0")
            if state_format is not None:
                state_format.check_plugins()
                dry_run_chains(state_format, self.limits, initial)
            raise_if_invalid(self._state_issues(initial, schema, settings), "state")
            return initial

        state = await asyncio.to_thread(checked_state)
        new = NewContext(
            id=context_id or uuid.uuid4(),
            namespace=self.principal.namespace,
            name=name,
            version=version,
            metadata=metadata,
            settings=settings,
            schema=schema,
            handlers=handlers or {},
            state=state,
        )
        return await self._register(new, if_exists=if_exists)

    async def unregister(self, name: str, *, expected_revision: int | None = None, purge: bool = False) -> Change:
        check_name(name)
        await self.authorize("admin", name)
        try:
            change = await self._committed(
                self.store.unregister(
                    self.principal.namespace,
                    name,
                    expected_revision,
                    purge=purge,
                    actor=self.principal.name,
                    audit=self._audit_note("purge" if purge else None),
                    lease_token=presented_lease.get(),
                ),
                lambda c: c,
            )
        except NotFoundError:
            await expire_if_due(self, name)
            raise
        return change

    async def get(self, name: str) -> StoredContext:
        check_name(name)
        # Before the lookup: a context you may not read is never read nor decoded, so it costs
        # exactly what a missing one costs (grants depend on the name only).
        await self.authorize("read", name)
        stored = await self.store.get(self.principal.namespace, name)
        if stored is None:
            await expire_if_due(self, name)
            raise NotFoundError(_missing(name))
        return stored

    async def list(self, *, prefix: str = "", cursor: str | None = None, limit: int = 50) -> ContextPage:
        if prefix:
            _check_prefix(prefix)
        if not 1 <= limit <= self.limits.max_page:
            raise StateValidationError(
                [ValidationIssue("", f"must be between 1 and {self.limits.max_page}; got {limit}")],
                field="limit",
            )
        after = _decode_cursor(cursor) if cursor else None
        rows = await self._list_visible(prefix, after, limit + 1)
        next_cursor = _encode_cursor(rows[limit - 1].name) if len(rows) > limit else None
        return ContextPage(rows[:limit], next_cursor)

    async def read(self, name: str, revision: int | None = None) -> tuple[StoredContext, int, ContextState]:
        """The current state, or the state at ``revision``: ``(context, revision, state)``; a state
        stored in an older format version is upcast to the context's current one."""
        context, at, state, _ = await self.read_upcast(name, revision)
        return context, at, state

    async def read_upcast(self, name: str, revision: int | None = None) -> tuple[StoredContext, int, ContextState, str]:
        """Like :meth:`read`, plus the format version the state is stored in."""
        context = await self.get(name)
        if revision is None or revision == context.revision:
            at, stored = context.revision, context.state
        else:
            at, stored = revision, await self._revision_state(context, revision)
        return context, at, await self._upcast_off_loop(context, stored, at), stored.version

    async def update(
        self,
        name: str,
        *,
        data: JSONObject | None = None,
        merge_patch_: JSONObject | None = None,
        patch: list[JSONObject] | None = None,
        metadata: JSONObject | None = None,
        version: str | None = None,
        expected_revision: int | None = None,
    ) -> WriteResult:
        """Apply exactly one of ``data`` (replace), ``merge_patch_`` (RFC 7396), ``patch`` (RFC 6902)."""
        check_name(name)
        await self.authorize("write", name)
        given = [f for f, v in (("data", data), ("merge_patch", merge_patch_), ("patch", patch)) if v is not None]
        if len(given) > 1 or (not given and metadata is None and version is None):
            raise StateValidationError(
                [
                    ValidationIssue(
                        "",
                        "give exactly one of data (replace), merge_patch (RFC 7396) or patch (RFC 6902)"
                        + (f"; got {', '.join(given)}" if given else "; got none (and no metadata)"),
                    )
                ],
                field="update",
            )

        def check_inputs() -> None:
            for field, value in (
                ("data", data),
                ("merge_patch", merge_patch_),
                ("patch", patch),
                ("metadata", metadata),
            ):
                if value is not None:
                    raise_if_invalid(inspect_json(value, self.limits), field)

        await asyncio.to_thread(check_inputs)
        if version is not None:
            check_semver(version)
        if expected_revision == 0:
            return await self._create_from_update(name, data, merge_patch_, patch, metadata, version)

        def apply(current: StoredContext) -> Mutation:
            # Patches apply to what reads return; a replace needs no upcast (upcasters keep metadata).
            base = current.state if data is not None else self._upcast(current, current.state)
            new_data: JSONObject = base.data
            if data is not None:
                new_data = data
            elif merge_patch_ is not None:
                new_data = merge_patch(base.data, merge_patch_)
            elif patch is not None:
                new_data = apply_json_patch(base.data, patch, max_copy_bytes=self.limits.max_state_bytes)
            new_metadata = base.metadata if metadata is None else merge_patch(base.metadata, metadata)
            state = ContextState(
                data=new_data,
                metadata=new_metadata,
                timestamp=utcnow(),
                version=version or self._format_version(current) or base.version,
            )
            # A replace or merge only puts checked input values at the paths they had in the input
            # (depth included): the structural walk can be skipped. A JSON Patch can move values
            # anywhere, so its result is walked.
            self._check_written(state, current, structure_known_valid=patch is None)
            return Mutation(state, json_diff(current.state.document(), state.document()))

        return await self._mutate(name, expected_revision, apply, detail=", ".join(given) or "metadata")

    async def _create_from_update(
        self,
        name: str,
        data: JSONObject | None,
        merge_patch_: JSONObject | None,
        patch: list[JSONObject] | None,
        metadata: JSONObject | None,
        version: str | None,
    ) -> WriteResult:
        """``expected_revision=0``: the context must not exist yet; create it with this state."""
        if data is None:
            data = merge_patch(None, merge_patch_) if merge_patch_ is not None else {}
            if patch is not None:
                data = apply_json_patch({}, patch, max_copy_bytes=self.limits.max_state_bytes)
        state = ContextState(data=data or {}, metadata=merge_patch(None, metadata or {}), version=version or "1.0.0")
        try:
            result = await self.register(name, state=state, if_exists="error")
        except ConflictError as exc:
            raise ConflictError(name, 0, exc.current_revision) from None
        assert isinstance(result, WriteResult)  # if_exists="error" never returns an existing context
        return result

    async def check(
        self, name: str, *, data: JSONObject | None = None, metadata: JSONObject | None = None
    ) -> tuple[StoredContext, list[ValidationIssue]]:
        """Validate a candidate (or the current) state of ``name`` without writing."""
        context = await self.get(name)
        current = await self._upcast_off_loop(context, context.state)
        candidate = ContextState(
            data=current.data if data is None else data,
            metadata=current.metadata if metadata is None else metadata,
            timestamp=current.timestamp,
            version=current.version,
        )
        issues = await asyncio.to_thread(self._state_issues, candidate, context.schema, context.settings)
        return context, issues

    async def history(self, name: str, *, before: int | None = None, limit: int = 20) -> list[HistoryEntry]:
        if not 1 <= limit <= self.limits.max_history_page:
            raise StateValidationError(
                [ValidationIssue("", f"must be between 1 and {self.limits.max_history_page}; got {limit}")],
                field="limit",
            )
        context = await self.get(name)
        return await self.store.history(context.id, before=before, limit=limit)

    async def diff(self, name: str, from_revision: int, to_revision: int | None = None) -> list[JSONObject]:
        context = await self.get(name)
        source = await self._revision_state(context, from_revision, field="from_revision")
        target = (
            context.state
            if to_revision is None or to_revision == context.revision
            else await self._revision_state(context, to_revision, field="to_revision")
        )
        # Proportional to two whole states: computed in a worker thread, not on the event loop.
        return await asyncio.to_thread(json_diff, source.document(), target.document())

    async def rollback(self, name: str, revision: int, *, expected_revision: int | None = None) -> WriteResult:
        """Restore ``revision``'s data and metadata as a *new* revision."""
        check_name(name)
        await self.authorize("write", name)
        context = await self.get(name)
        old = await self._revision_state(context, revision)

        def restore(current: StoredContext) -> Mutation:
            state = ContextState(data=old.data, metadata=old.metadata, timestamp=utcnow(), version=old.version)
            self._check_written(state, current)
            return Mutation(state, json_diff(current.state.document(), state.document()), op="rollback")

        return await self._mutate(name, expected_revision, restore, detail=f"restores revision {revision}")

    async def changes_after(self, sequence: int, *, limit: int = 100) -> list[Change]:
        changes = await self.store.changes_after(sequence, limit=limit)
        return [c for c in changes if self._sees(c)]

    async def wait_for_changes(
        self,
        names: Sequence[str] | None = None,
        *,
        after_sequence: int | None = None,
        timeout: float = 30.0,  # noqa: ASYNC109 - the wait is the operation itself, bounded and validated here
        limit: int = 100,
    ) -> tuple[list[Change], int]:
        """Changes after ``after_sequence`` to ``names`` (or to any of your contexts), waiting up
        to ``timeout`` seconds for the first. Returns ``(changes, cursor)``; pass ``cursor`` as the
        next ``after_sequence``. ``after_sequence=None`` means "from now"."""
        wanted = set(names) if names else None
        for name in wanted or ():
            check_name(name, field="contexts")
        if not 0 <= timeout <= MAX_WAIT_SECONDS:
            raise StateValidationError(
                [ValidationIssue("", f"must be between 0 and {MAX_WAIT_SECONDS} seconds; got {timeout}")],
                field="timeout",
            )
        if not 1 <= limit <= self.limits.max_page:
            raise StateValidationError(
                [ValidationIssue("", f"must be between 1 and {self.limits.max_page}; got {limit}")], field="limit"
            )

        def matches(change: Change) -> bool:
            return self._sees(change) and (wanted is None or change.name in wanted)

        subscription = self.bus.subscribe()
        try:
            # "From now" is the last committed change, which the feed may not have published yet.
            cursor = await self.store.last_sequence() if after_sequence is None else after_sequence
            found, cursor = await self._scan_feed(cursor, matches, limit)
            if found:
                return found, cursor
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        item = await subscription.get()
                        if isinstance(item, Resync) or item.sequence > cursor + 1:
                            # Fell behind, or missed something: read the feed itself.
                            found, cursor = await self._scan_feed(cursor, matches, limit)
                        elif item.sequence > cursor:
                            cursor = item.sequence
                            found = [item] if matches(item) else []
                        if found:
                            return found, cursor
            except TimeoutError:
                return [], cursor
        finally:
            subscription.close()

    async def _scan_feed(self, cursor: int, matches: Callable[[Change], bool], limit: int) -> tuple[list[Change], int]:
        """Matching changes after ``cursor`` up to what the feed has published (bounded pages)."""
        found: list[Change] = []
        head = self.feed.cursor
        for _ in range(_MAX_SCAN_PAGES):
            if cursor >= head:
                break
            page = await self.store.changes_after(cursor, limit=_SCAN_PAGE)
            if not page:
                break
            for change in page:
                if change.sequence > head:
                    return found, cursor
                cursor = change.sequence
                if matches(change):
                    found.append(change)
                    if len(found) >= limit:
                        return found, cursor
        return found, cursor

    # -- metrics ----------------------------------------------------------------------------

    async def collect_metrics(
        self, names: Sequence[str] | None = None, *, prefix: str = "", limit: int = 100
    ) -> tuple[dict[str, Any], list[ContextMetrics]]:
        """Server metrics and per-context metrics (counts from the store, latencies of this process)."""
        if names:
            contexts = [await self.get(name) for name in names[: self.limits.max_page]]
        else:
            contexts = (await self.list(prefix=prefix, limit=min(limit, self.limits.max_page))).contexts
        counts = await self.store.context_counts([c.id for c in contexts])
        per_context: list[ContextMetrics] = []
        for ctx in contexts:
            updates, events, letters = counts.get(ctx.id, (0, 0, 0))
            writes = self.metrics.write_latency(self._metric_key(ctx.name))
            per_context.append(
                ContextMetrics(
                    name=ctx.name,
                    revision=ctx.revision,
                    state_updates=updates,
                    event_count=events,
                    dead_letters=letters,
                    state_size=ctx.state_size,
                    average_latency_ms=writes.average_ms,
                    write_latency=writes,
                    handler_latency=self.metrics.handler_latency(self._metric_key(ctx.name)),
                    errors=dict(self.metrics.context_errors.get(self._metric_key(ctx.name), {})),
                )
            )
        status = await self.store.status()
        # Counts of what this principal may read, never of the whole store: other namespaces'
        # (and unreadable) contexts stay invisible here too.
        visible, last_sequence = 0, 0
        for visible_prefix in self._visible_prefixes(""):
            count, last = await self.store.namespace_summary(self.principal.namespace, visible_prefix)
            visible, last_sequence = visible + count, max(last_sequence, last)
        server: dict[str, Any] = {
            "uptime_seconds": self.metrics.uptime_seconds(),
            "rss_bytes": process_rss_bytes(),
            "database_bytes": status.size_bytes,
            "backend": status.backend,
            "contexts": visible,
            "last_sequence": last_sequence,
            "errors": dict(self.metrics.namespace_errors.get(self.principal.namespace, {})),
            "denied_requests": self._visible_denials(),
        }
        return server, per_context

    def _visible_denials(self) -> dict[str, dict[str, int]]:
        """Denied requests of this namespace by principal: every principal's for an admin of the
        whole namespace (as the audit log), otherwise the caller's own."""
        denied = self.metrics.denied_in(self.principal.namespace)
        if self.principal.allows("admin", ""):
            return denied
        return {name: counts for name, counts in denied.items() if name == self.principal.name}

    # -- events -----------------------------------------------------------------------------

    async def emit_event(
        self,
        name: str,
        event: Event,
        *,
        handlers: Mapping[str, EventHandler] | None = None,
        dead_letter: DeadLetter | None = None,
    ) -> EventResult:
        """Handle ``event`` on context ``name``: validate, run the handler, commit the state change
        and the event record in one transaction. A repeated ``idempotency_key`` returns the first
        result; a failing handler is retried with backoff, then the event is dead-lettered."""
        check_name(name)
        await self.authorize("write", name)
        self._check_event(event)
        context = await self.get(name)
        if event.idempotency_key is not None:
            seen = await self.store.find_event(context.id, event.idempotency_key)
            if seen is not None:
                return EventResult(context.name, event.type, seen.revision, seen.sequence, [], duplicate=True)
        handler, attempts = self._handler_for(context, event.type, handlers)
        try:
            await handler.validate_event(event)
        except ContextError:
            raise
        except Exception as exc:
            raise EventHandlingError(
                f"payload: the {event.type!r} handler rejected the event ({type(exc).__name__}: {exc}); "
                "nothing was changed"
            ) from None
        last_error = ""
        attempt = races = 0
        while attempt < attempts:
            current = await self.get(name)
            try:
                started = time.perf_counter()
                try:
                    upcast_current = await asyncio.to_thread(self._upcast_context, current)
                    staged = await _run_handler(handler, event, upcast_current)
                finally:
                    self.metrics.observe_handler(self._metric_key(name), time.perf_counter() - started)
                result = await self._mutate(
                    name,
                    current.revision,
                    self._event_mutator(staged),
                    event=_record_of(event),
                    detail=_event_detail(event, dead_letter),
                )
                return EventResult(
                    name, event.type, result.context.revision, result.change.sequence, result.change.patch or []
                )
            except ConflictError:
                races += 1  # another writer got in between: not the handler's fault, try again
                if races > _MAX_EVENT_RACES:
                    raise
                continue
            except EventAlreadyHandled as done:
                return EventResult(name, event.type, done.event.revision, done.event.sequence, [], duplicate=True)
            except (HandlerFailure, StateValidationError, StateUpdateError, EventHandlingError) as exc:
                last_error = str(exc)
            attempt += 1
            if attempt < attempts:
                await asyncio.sleep(min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (attempt - 1)))
        letter = await self.store.add_dead_letter(
            dead_letter
            or DeadLetter(
                id=0,
                namespace=context.namespace,
                context_id=context.id,
                name=context.name,
                type=event.type,
                payload=event.payload,
                idempotency_key=event.idempotency_key,
                attempts=attempts,
                last_error=last_error[:2000],
                created_at=utcnow(),
            ),
            actor=self.principal.name,
            audit=self._audit_note(_event_detail(event, dead_letter)),
        )
        raise EventHandlingError(
            f"type: the {event.type!r} handler of context {name!r} failed {attempts} time(s); the state is "
            f"unchanged and the event is dead letter #{letter.id} (last error: {last_error[:500]}); "
            "fix the cause, then replay_dead_letter"
        )

    async def list_dead_letters(
        self, *, name: str | None = None, after_id: int = 0, limit: int = 50, include_replayed: bool = False
    ) -> list[DeadLetter]:
        if name is not None:
            check_name(name)
        if not 1 <= limit <= self.limits.max_page:
            raise StateValidationError(
                [ValidationIssue("", f"must be between 1 and {self.limits.max_page}; got {limit}")], field="limit"
            )
        if name is not None and not self.principal.allows("read", name):
            return []  # like a context without letters, and without reading any
        found: list[DeadLetter] = []
        for _ in range(_MAX_SCAN_PAGES):
            page = await self.store.list_dead_letters(
                self.principal.namespace, name=name, after_id=after_id, limit=limit, include_replayed=include_replayed
            )
            # Letters of contexts this principal may not read are left out, like missing ones.
            found += [letter for letter in page if self.principal.allows("read", letter.name)]
            if len(found) >= limit or len(page) < limit:
                break
            after_id = page[-1].id
        return found[:limit]

    async def replay_dead_letter(
        self, letter_id: int, *, handlers: Mapping[str, EventHandler] | None = None
    ) -> EventResult:
        """Handle a dead-lettered event again; applied once even if replayed twice."""
        missing = f"id: no dead letter #{letter_id}"
        # The context's name first (nothing decoded), the grants on it, and only then the letter.
        name = await self.store.dead_letter_name(self.principal.namespace, letter_id)
        if name is None:
            raise NotFoundError(missing)
        await self.authorize("read", name, missing=missing, itemize=False)
        await self.authorize("write", name)
        letter = await self.store.get_dead_letter(self.principal.namespace, letter_id)
        if letter is None:
            raise NotFoundError(missing)
        if letter.replayed_at is not None:
            raise StateUpdateError(
                f"id: dead letter #{letter_id} was already replayed (revision {letter.replay_revision}); "
                "it is applied only once"
            )
        # A key makes the replay exactly-once even if this call is retried.
        key = letter.idempotency_key or f"dead-letter-{letter.id}"
        event = Event(type=letter.type, payload=letter.payload, idempotency_key=key)
        result = await self.emit_event(letter.name, event, handlers=handlers, dead_letter=letter)
        await self.store.mark_replayed(letter.id, result.revision)
        return result

    def _check_event(self, event: Event) -> None:
        if not 1 <= len(event.type) <= 128:
            raise StateValidationError(
                [ValidationIssue("", f"must be 1-128 characters; got {len(event.type)}")], field="type"
            )
        if event.idempotency_key is not None and not 1 <= len(event.idempotency_key) <= 200:
            raise StateValidationError(
                [ValidationIssue("", f"must be 1-200 characters; got {len(event.idempotency_key)}")],
                field="idempotency_key",
            )
        raise_if_invalid(inspect_json(event.payload, self.limits), "payload")
        size = len(dumps(event.payload).encode("utf-8"))
        if size > self.limits.max_event_payload_bytes:
            raise StateValidationError(
                [
                    ValidationIssue(
                        "", f"serialised size {size} bytes exceeds limit {self.limits.max_event_payload_bytes} bytes"
                    )
                ],
                field="payload",
            )

    def _event_mutator(self, staged: ContextState) -> Callable[[StoredContext], Mutation]:
        def apply(current: StoredContext) -> Mutation:
            state = ContextState(data=staged.data, metadata=staged.metadata, timestamp=utcnow(), version=staged.version)
            self._check_written(state, current)
            return Mutation(state, json_diff(current.state.document(), state.document()), op="event")

        return apply

    def _handler_for(
        self, context: StoredContext, event_type: str, handlers: Mapping[str, EventHandler] | None
    ) -> tuple[EventHandler, int]:
        spec = context.handlers.get(event_type)
        attempts = self.event_max_attempts
        if isinstance(spec, dict) and isinstance(spec.get("max_attempts"), int):
            attempts = int(spec["max_attempts"])  # pyright: ignore[reportUnknownArgumentType]
        if handlers and event_type in handlers:
            return handlers[event_type], attempts
        if spec is not None:
            return handler_from_spec(event_type, spec), attempts
        known: list[str] = sorted({*context.handlers, *(handlers or {})})
        raise EventHandlingError(
            f"type: context {context.name!r} has no handler for event type {event_type!r} "
            f"(handlers: {', '.join(known) or 'none'}); register the context with event_handlers"
        )

    # -- internals --------------------------------------------------------------------------

    def _metric_key(self, name: str) -> str:
        """Per-context measurements are kept per namespace: same-named contexts of two tenants
        never share (or reveal) each other's figures."""
        return f"{self.principal.namespace}/{name}"

    def _raise_if_invalid_state(
        self, state: ContextState, schema: JSONObject | None, *, structure_known_valid: bool = False
    ) -> None:
        raise_if_invalid(
            inspect_state(state, self.limits, schema, structure_known_valid=structure_known_valid), "state"
        )

    def _state_issues(
        self,
        state: ContextState,
        schema: JSONObject | None,
        settings: JSONObject,
        *,
        structure_known_valid: bool = False,
    ) -> list[ValidationIssue]:
        """Limits and schema; with a declared state format, the version must be one of the format's
        and the data is checked against the schema(s) of that version."""
        state_format = format_of(settings)
        if state_format is None:
            return inspect_state(state, self.limits, schema, structure_known_valid=structure_known_valid)
        problem = state_format.version_problem(state.version)
        if problem is not None:
            return [ValidationIssue("/version", problem)]
        schemas = state_format.schemas_for(state.version, schema)
        issues = inspect_state(
            state, self.limits, schemas[0] if schemas else None, structure_known_valid=structure_known_valid
        )
        for extra in schemas[1:]:
            issues += [ValidationIssue("/data" + i.pointer, i.message) for i in schema_issues(extra, state.data)]
        return issues

    def _check_written(
        self, state: ContextState, context: StoredContext, *, structure_known_valid: bool = False
    ) -> None:
        raise_if_invalid(
            self._state_issues(state, context.schema, context.settings, structure_known_valid=structure_known_valid),
            "state",
        )

    def _upcast(self, context: StoredContext, state: ContextState, revision: int | None = None) -> ContextState:
        """``state`` (of ``revision``, default the context's current one) in the context's current
        format version (as is when it declares none). Results are cached per context id, revision
        and version: reading an old state again does not rerun the chain."""
        state_format = format_of(context.settings)
        if state_format is None or state.version == state_format.version:
            return state
        key = (str(context.id), context.revision if revision is None else revision, state.version, state_format.version)
        cached = self.upcasts.get(key)
        if cached is not None:
            return cached
        result = upcast(state_format, state, context=context.name, limits=self.limits)[0]
        self.upcasts.put(key, result, len(dumps(result.data)))
        return result

    async def _upcast_off_loop(
        self, context: StoredContext, state: ContextState, revision: int | None = None
    ) -> ContextState:
        """:meth:`_upcast` in a worker thread unless there is nothing to run (no format, or cached)."""
        state_format = format_of(context.settings)
        if state_format is None or state.version == state_format.version:
            return state
        return await asyncio.to_thread(self._upcast, context, state, revision)

    def _format_version(self, context: StoredContext) -> str | None:
        state_format = format_of(context.settings)
        return state_format.version if state_format is not None else None

    def _upcast_context(self, context: StoredContext) -> StoredContext:
        state = self._upcast(context, context.state)
        if state is context.state:
            return context
        # A handler may change what it reads in place: give it its own copy, not the cached one.
        return dataclasses.replace(context, state=copy.deepcopy(state))

    async def _revision_state(self, context: StoredContext, revision: int, field: str = "revision") -> ContextState:
        if revision == context.revision:
            return context.state
        if revision < 1 or revision > context.revision:
            raise NotFoundError(
                f"{field}: context {context.name!r} has no revision {revision} (current revision is {context.revision})"
            )
        found = await self.store.read_revision(context.id, revision)
        if isinstance(found, int):
            raise CompactedError(context.name, revision, found)
        if found is None:
            raise NotFoundError(
                f"{field}: revision {revision} of context {context.name!r} belongs to an earlier registration "
                "of this name or was purged"
            )
        return found.state

    async def _register(self, new: NewContext, *, if_exists: Literal["error", "return"]) -> WriteResult | StoredContext:
        stored, change = await self._committed(
            self.store.register(new, actor=self.principal.name, if_exists=if_exists, audit=self._audit_note()),
            lambda r: r[1],
        )
        if change is None:
            return stored
        return WriteResult(stored, change, None)

    async def _mutate(
        self,
        name: str,
        expected_revision: int | None,
        mutator: Callable[[StoredContext], Mutation],
        *,
        event: EventRecord | None = None,
        detail: str | None = None,
    ) -> WriteResult:
        started = time.perf_counter()
        try:
            mutator = await self._prepared(name, expected_revision, mutator)
            stored, change = await self._committed(
                self.store.mutate(
                    self.principal.namespace,
                    name,
                    expected_revision,
                    mutator,
                    actor=self.principal.name,
                    event=event,
                    audit=self._audit_note(detail),
                    lease_token=presented_lease.get(),
                ),
                lambda r: r[1],
            )
        except ContextError as exc:
            self.metrics.count_error(type(exc).__name__, self._metric_key(name))
            if isinstance(exc, NotFoundError):
                await expire_if_due(self, name)
            raise
        finally:
            self.metrics.observe_write(self._metric_key(name), time.perf_counter() - started)
        return WriteResult(stored, change, change.revision - 1)

    async def _prepared(
        self, name: str, expected_revision: int | None, mutator: Callable[[StoredContext], Mutation]
    ) -> Callable[[StoredContext], Mutation]:
        """``mutator``, already run on the current state in a worker thread.

        A mutator applies, validates and diffs a state: CPU work proportional to its size. Inside
        the write transaction it would run on the database's thread (SQLite has one for every
        request) and hold every other tenant's reads up. Run first here, its result is reused by
        the transaction when the context is still at the revision it was computed on; only after
        a race does the transaction run it again."""
        current = await self.store.get(self.principal.namespace, name)
        if current is None or (expected_revision is not None and expected_revision != current.revision):
            return mutator  # the transaction raises the NotFoundError / ConflictError
        mutation = await asyncio.to_thread(mutator, current)
        seen = (current.id, current.revision)

        def reuse(now: StoredContext) -> Mutation:
            return mutation if (now.id, now.revision) == seen else mutator(now)

        return reuse

    async def _committed(self, write: Awaitable[_T], change_of: Callable[[_T], Change | None]) -> _T:
        """Run a write to completion even if the caller is cancelled, then hand its change to the feed.

        A cancelled client must not leave a committed change unannounced, so the write
        and the wake-up run in their own task; the feed publishes changes in sequence order.
        """

        async def write_then_publish() -> _T:
            result = await write
            change = change_of(result)
            if change is not None:
                self.feed.committed(change)
            return result

        task = asyncio.ensure_future(write_then_publish())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return await asyncio.shield(task)

    # -- merge (appended: keep at the end of the class) -------------------------------------

    async def merge(
        self,
        inputs: Sequence[MergeSource | Mapping[str, Any]],
        *,
        strategy: Strategy = "ordered",
        base: MergeSource | Mapping[str, Any] | None = None,
        reducers: Mapping[str, str] | None = None,
        on_conflict: OnConflict = "fail",
        target: str | None = None,
        expected_revision: int | None = None,
        dry_run: bool = False,
    ) -> MergeOutcome:
        """Merge 2+ inputs, each ``{"context": name, "revision": n | None}`` (None: current) or an
        inline state, and optionally write the result to ``target`` as one new revision (op ``merge``).

        ``three_way`` without ``base``: when every input is a revision of one context, the base is
        the lowest revision given, their common ancestor in the context's linear history. With
        ``target`` the result is validated against the target's schema and limits and written
        through the usual compare-and-set (``expected_revision``; ``0`` creates the target); an
        input naming the target's current state is re-read inside the write transaction, so a
        write that lands meanwhile is merged in, never overwritten. ``dry_run`` runs every check
        but writes nothing, and lists conflicts instead of raising them.
        """
        check_merge_arguments(
            count=len(inputs),
            strategy=strategy,
            on_conflict=on_conflict,
            reducers=reducers,
            base_given=base is not None,
        )
        sources = [parse_source(item, f"inputs[{i}]") for i, item in enumerate(inputs)]
        base_source = parse_source(base, "base") if base is not None else None
        if target is not None:
            check_name(target, field="target")
            await self.authorize("write", target)
        elif expected_revision is not None:
            raise StateValidationError(
                [ValidationIssue("", "only used with target (the context the merged state is written to)")],
                field="expected_revision",
            )
        contexts: dict[str, StoredContext] = {}

        async def resolve(source: MergeSource, field: str) -> tuple[ContextState, SourceInfo]:
            if isinstance(source, ContextState):
                raise_if_invalid(await asyncio.to_thread(inspect_state, source, self.limits, None), field)
                return source, SourceInfo()
            context = contexts.get(source.context)
            if context is None:
                try:
                    context = await self.get(source.context)  # reads as this principal, like get_state
                except NotFoundError:
                    raise NotFoundError(f"{field}.context: no context named {source.context!r}") from None
                contexts[source.context] = context
            revision = source.revision or context.revision
            state = await self._revision_state(context, revision, field=f"{field}.revision")
            # Inputs are merged in their context's current state format (the result's version is theirs).
            return await self._upcast_off_loop(context, state, revision), SourceInfo(source.context, revision)

        resolved = [await resolve(s, f"inputs[{i}]") for i, s in enumerate(sources)]
        states = [state for state, _ in resolved]
        infos = [info for _, info in resolved]
        refs = [s for s in sources if isinstance(s, ContextRef)]
        one_context = len(refs) == len(sources) and len({r.context for r in refs}) == 1
        if strategy == "three_way" and base_source is None and one_context:
            base_source = ContextRef(refs[0].context, min(i.revision or 0 for i in infos))
        base_state, base_info = await resolve(base_source, "base") if base_source is not None else (None, None)

        def run(given: list[ContextState]) -> MergeResult:
            result = compute_merge(
                given,
                strategy=strategy,
                base=base_state,
                reducers=reducers,
                on_conflict=on_conflict,
                field="inputs",
                report_conflicts=dry_run,
            )
            if target is None and not (dry_run and result.conflicts and on_conflict == "fail"):
                raise_if_invalid(inspect_state(result.state, self.limits, None), "merged")
            return result

        result = await asyncio.to_thread(run, states)
        if dry_run and result.conflicts and on_conflict == "fail":
            # Listed instead of raised; there is no merged state (nor a winner) until they are resolved.
            return MergeOutcome(None, result.conflicts, [], strategy, infos, base_info, dry_run=True)

        def outcome(result: MergeResult, write: WriteResult | None = None) -> MergeOutcome:
            return MergeOutcome(
                result.state, result.conflicts, result.provenance, strategy, infos, base_info, write, dry_run
            )

        if target is None:
            return outcome(result)
        missing = f"target: no context named {target!r}; register it first, or pass expected_revision=0 to create it"
        if dry_run:
            try:
                current: StoredContext | None = await self.get(target)
            except NotFoundError:
                current = None
            if current is None and expected_revision != 0:
                raise NotFoundError(missing)
            if current is not None and expected_revision is not None and expected_revision != current.revision:
                raise ConflictError(target, expected_revision, current.revision)
            issues = await asyncio.to_thread(
                self._state_issues,
                result.state,
                current.schema if current is not None else None,
                current.settings if current is not None else {},
            )
            raise_if_invalid(issues, "state")
            return outcome(result)
        if expected_revision == 0:
            try:
                created = await self.register(target, state=result.state, if_exists="error")
            except ConflictError as exc:
                raise ConflictError(target, 0, exc.current_revision) from None
            assert isinstance(created, WriteResult)  # if_exists="error" never returns an existing context
            return outcome(result, created)

        live = [i for i, s in enumerate(sources) if s == ContextRef(target)]
        latest = [result]

        def apply(current: StoredContext) -> Mutation:
            if live and current.revision != infos[live[0]].revision:
                # The target moved since it was read: merge its state as of this transaction.
                latest[0] = run(
                    [self._upcast(current, current.state) if i in live else s for i, s in enumerate(states)]
                )
                for i in live:  # and report the revision that was merged, not the one first read
                    infos[i] = SourceInfo(target, current.revision)
            state = latest[0].state
            self._check_written(state, current)
            return Mutation(state, json_diff(current.state.document(), state.document()), op="merge")

        try:
            write = await self._mutate(target, expected_revision, apply, detail=f"strategy {strategy}")
        except NotFoundError:
            raise NotFoundError(missing) from None
        return outcome(latest[0], write)

    # -- access control (appended: keep at the end of the class) ----------------------------

    async def authorize(self, right: Right, name: str, *, missing: str | None = None, itemize: bool = True) -> None:
        """The one place where a grant is checked: return if this principal has ``right`` on
        context ``name``, raise otherwise. Every name-addressed operation calls it (reads need
        ``read``; register, update, merge into a target, events, rollback and dead-letter replay
        need ``write``; unregister and migrate need ``admin``).

        It runs before any read of the context (grants depend on the name only), so a denied
        request does the same store work whether the context exists or not, and never reads or
        decodes it. A ``read`` the principal lacks raises exactly what a missing context raises
        (:class:`NotFoundError` with ``missing``, by default the text of :meth:`get`). A lacking
        ``write``/``admin`` raises :class:`AccessDeniedError` naming the grant.

        Every denial is counted in the metrics and the audit log (see :meth:`audit_denied`);
        ``itemize=False`` (for a name the caller did not give but the store told: a context id,
        a dead letter id) only counts it, so that answer too costs what a missing id costs.
        """
        if self.principal.allows(right, name):
            return
        denied = AccessDeniedError(
            f"access: the {right} grant on {name!r} is missing for principal {self.principal.name!r}"
        )
        # Every denial is recorded (the caller of a refused read sees only "not found").
        await self.audit_denied(current_operation.get() or right, name or None, denied, itemize=itemize)
        if right == "read":
            raise NotFoundError(missing or _missing(name))
        raise denied

    def _sees(self, change: Change) -> bool:
        """Whether a change on the feed is one this principal may hear about."""
        return change.namespace == self.principal.namespace and self.principal.allows("read", change.name)

    def _visible_prefixes(self, prefix: str) -> tuple[str, ...]:
        """Disjoint name prefixes covering the readable contexts whose names start with ``prefix``."""
        found: list[str] = []
        for granted in self.principal.prefixes("read"):
            if prefix.startswith(granted):
                return (prefix,)  # one grant covers the whole requested range
            if granted.startswith(prefix):
                found.append(granted)
        return tuple(found)

    async def _list_visible(self, prefix: str, after: str | None, limit: int) -> list[StoredContext]:
        """Readable live contexts by name, names > ``after``: one store page per readable prefix,
        merged in the store's (bytewise) name order."""
        prefixes = self._visible_prefixes(prefix)
        if len(prefixes) == 1:
            return await self.store.list(self.principal.namespace, prefix=prefixes[0], after=after, limit=limit)
        rows: list[StoredContext] = []
        for visible in prefixes:
            rows += await self.store.list(self.principal.namespace, prefix=visible, after=after, limit=limit)
        return sorted(rows, key=lambda c: c.name.encode())[:limit]

    # -- per-request principals (appended: keep at the end of the class) ---------------------

    def with_principal(self, principal: Principal) -> StateManager:
        """A view of this manager acting as ``principal``: same store, bus, feed, metrics and
        pending writes (so :meth:`close` on this manager waits for the view's writes too).
        Never start or close the view itself."""
        import copy

        view = copy.copy(self)  # shallow on purpose: the view shares the manager's parts
        view.principal = principal
        return view

    # -- leases (appended: keep at the end of the class; the logic is in service/leases.py) ---

    async def take_lease(
        self,
        name: str,
        *,
        ttl_seconds: float | None = None,
        wait_seconds: float = 0,
        holder: str | None = None,
    ) -> LeaseGrant:
        """Take the lease of context ``name`` (see :func:`groundhog_mcp.service.leases.take_lease`)."""
        return await leases.take_lease(self, name, ttl_seconds=ttl_seconds, wait_seconds=wait_seconds, holder=holder)

    async def renew_lease(self, name: str, token: int | None, *, ttl_seconds: float | None = None) -> LeaseGrant:
        """Extend the live lease ``token`` to ``ttl_seconds`` from now."""
        return await leases.lease_action(self, name, "renew", token=token, ttl_seconds=ttl_seconds)

    async def release_lease(self, name: str, token: int | None) -> LeaseGrant:
        """Release lease ``token`` (a release of a lease already released does nothing)."""
        return await leases.lease_action(self, name, "release", token=token)

    def leased(
        self,
        name: str,
        *,
        ttl_seconds: float | None = None,
        wait_seconds: float = 0,
        holder: str | None = None,
    ) -> AbstractAsyncContextManager[Lease]:
        """``async with manager.leased(name) as lease:`` every write in the block presents the
        lease's token; the lease is released at the end."""
        return leases.leased(self, name, ttl_seconds=ttl_seconds, wait_seconds=wait_seconds, holder=holder)

    async def lease_of(self, context: StoredContext) -> Lease | None:
        """The lease held on ``context`` now (read with :meth:`get`), None when it is free."""
        lease = await self.store.read_lease(context.id)
        return lease if lease is not None and lease.held(utcnow()) else None

    # -- the audit log (appended: keep at the end of the class) ------------------------------

    def _audit_note(self, detail: str | None = None) -> AuditNote:
        """What a write adds to its audit row: the request it serves, and ``detail``."""
        return AuditNote(request_id=current_request_id.get(), detail=detail)

    async def audit_denied(
        self,
        operation: str,
        name: str | None,
        error: AccessDeniedError,
        *,
        principal: Principal | None = None,
        itemize: bool = True,
    ) -> None:
        """Record a denied request (as ``principal``, default this manager's); call it where
        :class:`AccessDeniedError` is raised, then raise.

        Counted exactly in the metrics. In the audit log a principal gets at most one row per
        minute (:class:`~groundhog_mcp.service.audit.DenialLog`): the first denial of a minute is
        written now, in its own transaction; the others are counted and their count written with
        the principal's next row. Recorded once per error (``error.audited``). A failure to
        record is logged, never raised instead of the denial."""
        if error.audited:
            return
        error.audited = True
        who = principal or self.principal
        self.metrics.count_denied(who.namespace, who.name, operation)
        entry = AuditEntry(
            principal=who.name,
            namespace=who.namespace,
            operation=operation,
            outcome=AUDIT_DENIED,
            context=name,
            request_id=current_request_id.get(),
            detail=str(error)[:500],
        )
        row = self.denials.admit(entry, itemize=itemize)
        if row is not None:
            await self._append_denial_rows([row])

    async def _append_denial_rows(self, rows: list[AuditEntry]) -> None:
        async def append_all() -> None:
            for row in rows:
                await self.store.append_audit(row)

        task = asyncio.ensure_future(append_all())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        try:
            await asyncio.shield(task)
        except ContextError as exc:
            _log.error("audit: could not record denied requests", rows=len(rows), error=str(exc))

    async def flush_denials(self) -> None:
        """Write the count of every denial not yet in the audit log now (one summary row per
        principal with a count), whether or not its minute has passed."""
        await self._write_denial_summaries(everything=True)

    async def _write_denial_summaries(self, *, everything: bool = False) -> None:
        rows = self.denials.due(everything=everything)
        if rows:
            await self._append_denial_rows(rows)

    async def _flush_denial_summaries_forever(self) -> None:
        """Counts of denials whose minute has passed get their summary row within a few seconds."""
        while True:
            await asyncio.sleep(self.denial_summary_interval)
            try:
                await self._write_denial_summaries()
            except Exception:  # a bug here must not end the flushing, nor the server
                _log.exception("audit: writing denial summaries failed")

    async def audit_log(
        self,
        *,
        context: str | None = None,
        prefix: str = "",
        principal: str | None = None,
        operation: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
        newest_first: bool = True,
    ) -> AuditPage:
        """The audit rows of this principal's namespace, a page at a time, filtered by context
        (exact name or name prefix), principal, operation and time (``since`` ≤ t < ``until``).

        Needs the ``admin`` grant on ``context``, else on ``prefix`` (no filter: on every context).
        Denials without a context are listed only without a context or prefix filter."""
        if context is not None:
            check_name(context, field="context")
        if prefix:
            _check_prefix(prefix)
        await self.authorize("admin", context if context is not None else prefix)
        if not 1 <= limit <= self.limits.max_page:
            raise StateValidationError(
                [ValidationIssue("", f"must be between 1 and {self.limits.max_page}; got {limit}")], field="limit"
            )
        if since is not None and until is not None and until <= since:
            raise StateValidationError([ValidationIssue("", "must be later than since")], field="until")
        position = decode_audit_cursor(cursor) if cursor else None
        records = await self.store.read_audit(
            AuditQuery(
                namespace=self.principal.namespace,
                context=context,
                prefix=prefix or None,
                principal=principal,
                operation=operation,
                since=since,
                until=until,
                after=None if newest_first else position,
                before=position if newest_first else None,
                newest_first=newest_first,
                limit=limit + 1,
            )
        )
        more = len(records) > limit
        records = records[:limit]
        return AuditPage(records, encode_audit_cursor(records[-1].sequence) if more else None)

    # -- state format migration (appended: keep at the end of the class) ---------------------

    async def migrate(
        self,
        name: str | None = None,
        *,
        prefix: str | None = None,
        to_version: str | None = None,
        dry_run: bool = False,
        expected_revision: int | None = None,
        progress: Progress | None = None,
    ) -> MigrationReport:
        """Rewrite the state of context ``name``, or of every context whose name starts with
        ``prefix``, in its current state format version (or ``to_version``), one new revision each
        (op ``migrate``). Every selected context is upcast and validated before the first write: a
        failing upcaster raises :class:`MigrationError` naming context, step and cause, and changes
        nothing. ``dry_run`` only checks and reports the RFC 6902 diff per context. See
        :func:`groundhog_mcp.service.migration.migrate_contexts`."""
        if name is not None:
            check_name(name)
            await self.authorize("admin", name)
        if prefix:
            _check_prefix(prefix)

        async def list_page(prefix: str, after: str | None, limit: int) -> list[StoredContext]:
            # Only contexts this principal may read are selected (the others stay invisible);
            # among those, one it may not administer refuses the whole call before any write.
            page = await self._list_visible(prefix, after, limit)
            for context in page:
                await self.authorize("admin", context.name)
            return page

        def check(state: ContextState, context: StoredContext) -> list[ValidationIssue]:
            return self._state_issues(state, context.schema, context.settings)

        return await migrate_contexts(
            get=self.get,
            list_page=list_page,
            write=self._mutate,
            check=check,
            limits=self.limits,
            name=name,
            prefix=prefix,
            to_version=to_version,
            dry_run=dry_run,
            expected_revision=expected_revision,
            progress=progress,
        )


def _missing(name: str) -> str:
    return f"name: no context named {name!r}"


def _check_retention_settings(settings: JSONObject) -> None:
    keep_revisions = settings.get("keep_revisions")
    if keep_revisions is not None and (
        isinstance(keep_revisions, bool) or not isinstance(keep_revisions, int) or keep_revisions < 0
    ):
        raise StateValidationError(
            [ValidationIssue("", "must be an integer >= 0 (0 keeps every revision)")], field="settings.keep_revisions"
        )
    keep_days = settings.get("keep_days")
    if keep_days is not None and (
        isinstance(keep_days, bool) or not isinstance(keep_days, int | float) or keep_days <= 0
    ):
        raise StateValidationError([ValidationIssue("", "must be a number of days > 0")], field="settings.keep_days")


def _event_detail(event: Event, dead_letter: DeadLetter | None) -> str:
    """An event's audit note: its type (never its payload), and the dead letter it replays."""
    detail = f"event type {event.type!r}"
    if dead_letter is not None and dead_letter.id:
        detail += f", replay of dead letter #{dead_letter.id}"
    return detail


def _record_of(event: Event) -> EventRecord:
    return EventRecord(type=event.type, payload=event.payload, idempotency_key=event.idempotency_key)


async def _run_handler(handler: EventHandler, event: Event, current: StoredContext) -> ContextState:
    """Run a handler against a staging view of the context; returns the state it wants written."""
    from groundhog_mcp.service.registry import StagedContext  # registry builds on this module

    staged = StagedContext(current)
    try:
        await handler.handle_event(event, staged)
    except (HandlerFailure, ContextError):
        raise
    except Exception as exc:
        raise HandlerFailure(f"{type(exc).__name__}: {exc}") from exc
    return staged.staged or current.state


def _check_prefix(prefix: str) -> None:
    if len(prefix) > 128 or any(not (c.isascii() and (c.isalnum() or c in "._-")) for c in prefix):
        raise StateValidationError(
            [
                ValidationIssue(
                    "", f"must be the start of a context name (A-Z a-z 0-9 . _ -, ≤ 128); got {prefix[:80]!r}"
                )
            ],
            field="prefix",
        )
