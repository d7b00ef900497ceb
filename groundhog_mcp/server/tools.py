"""The MCP tools: thin wrappers that validate input, call the state manager, shape output."""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

import structlog
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from groundhog_mcp.errors import AccessDeniedError, ContextError
from groundhog_mcp.models import NAME_PATTERN, SEMVER_PATTERN, ContextState, Principal, format_timestamp
from groundhog_mcp.server.app_context import AppContext, current_operation, current_request_id
from groundhog_mcp.server.arguments import Timestamp
from groundhog_mcp.server.error_results import INTERNAL, CodedToolError
from groundhog_mcp.server.outputs import (
    ChangeOut,
    ChangesOut,
    ContextOut,
    DeadLetterOut,
    DeadLettersOut,
    DiffOut,
    EventOut,
    HistoryOut,
    ListOut,
    MetricsOut,
    MigrateOut,
    RevisionOut,
    StateOut,
    StateValue,
    TooLargeOut,
    UnregisterOut,
    ValidationIssueOut,
    ValidationOut,
    WriteOut,
    summary_of,
)
from groundhog_mcp.server.principals import request_principal
from groundhog_mcp.server.timeline_app import ui_meta
from groundhog_mcp.service import Caller, Event, StateManager, WriteResult
from groundhog_mcp.service.definition import differences
from groundhog_mcp.service.migration import format_of
from groundhog_mcp.service.reading import MAX_FIELDS, TooLarge, bounded, read_part

__all__ = ["register_tools"]

log = structlog.get_logger("groundhog_mcp.tools")

P = ParamSpec("P")
R = TypeVar("R")

AppCtx = Context[AppContext, Any]

Name = Annotated[
    str,
    Field(
        description="Context name",
        pattern=NAME_PATTERN,  # which bounds the length too: {1,128}
    ),
]
ExpectedRevision = Annotated[
    int | None,
    Field(
        description="The revision you last read, else a conflict names the current one; 0: must not exist yet",
        ge=0,
    ),
]
Revision = Annotated[int, Field(description="A revision of this context", ge=1)]
LeaseToken = Annotated[int | None, Field(description="From lease take")]
JSONObjectArg = dict[str, Any]
EventType = Annotated[
    str, Field(description="Event type; the context needs a handler for it", min_length=1, max_length=128)
]


class StateInput(BaseModel):
    """An initial state for register_context."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    data: JSONObjectArg = Field(default_factory=dict)
    metadata: JSONObjectArg = Field(default_factory=dict)
    version: str = Field(default="1.0.0", description="state format version", pattern=SEMVER_PATTERN)


class PatchOperation(BaseModel):
    """One RFC 6902 operation."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True, defer_build=True)

    op: Literal["add", "remove", "replace", "move", "copy", "test"]
    path: str = Field(description="JSON Pointer into data, e.g. /items/0")
    value: Any = Field(default=None)
    from_: str | None = Field(default=None, alias="from", description="for move and copy")

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_unset=True)


def tool_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Expected errors become tool errors with their precise message; bugs get an error id."""

    @functools.wraps(fn)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        app_ctx = kwargs.get("ctx")
        # Every audit row written while serving this call carries its JSON-RPC request id.
        token = current_request_id.set(app_ctx.request_id if isinstance(app_ctx, Context) else None)
        operation = current_operation.set(fn.__name__)
        try:
            return await fn(*args, **kwargs)
        except ContextError as exc:
            # The message may quote state values: log only what failed, never the text.
            log.info("tool error", tool=fn.__name__, error=type(exc).__name__)
            if isinstance(app_ctx, Context):
                app = _app(app_ctx)
                try:
                    namespace: str | None = _manager(app_ctx).principal.namespace
                except ContextError:
                    namespace = None
                app.manager.metrics.count_error(type(exc).__name__, namespace=namespace)
                if isinstance(exc, AccessDeniedError):
                    await _audit_denied(app_ctx, fn.__name__, kwargs.get("name"), exc)
            raise CodedToolError.of(exc) from None
        except ToolError:
            raise
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("tool failed unexpectedly", tool=fn.__name__, error_id=error_id)
            raise CodedToolError(
                f"internal error {error_id} in {fn.__name__}: this is a bug in groundhog-mcp, not in your "
                "request; the server log has the details under this id",
                code=INTERNAL,
            ) from None
        finally:
            current_operation.reset(operation)
            current_request_id.reset(token)

    return guarded


_ANONYMOUS = Principal(name="anonymous", namespace="", grants=())


async def _audit_denied(ctx: AppCtx, tool: str, name: object, error: AccessDeniedError) -> None:
    """A denial not yet recorded by the state manager (the request had no usable principal):
    recorded here, as ``anonymous`` in no namespace when the request names nobody."""
    if error.audited:
        return
    try:
        principal = request_principal(ctx.request_context.request)
    except AccessDeniedError:
        principal = None
    manager = _app(ctx).manager
    caller = Caller(manager.principal, current_request_id.get(), tool)
    await manager.with_caller(caller).audit_denied(
        tool, name if isinstance(name, str) else None, error, principal=principal or _ANONYMOUS
    )


def _app(ctx: AppCtx) -> AppContext:
    return ctx.request_context.lifespan_context


def _manager(ctx: AppCtx) -> StateManager:
    """The state manager acting as this request's principal (a bearer token's, over HTTP)."""
    return _app(ctx).request_manager(ctx.request_context.request)


def _write_out(result: WriteResult) -> WriteOut:
    return WriteOut.of(result)


@tool_errors
async def register_context(
    name: Name,
    ctx: AppCtx,
    # The service checks it (check_semver): the same message, without the pattern in the schema.
    version: Annotated[str, Field(description="Version of the context's definition (semver)")] = "1.0.0",
    state: Annotated[StateInput | None, Field(description="Initial state; empty when omitted")] = None,
    metadata: Annotated[JSONObjectArg | None, Field(description="About the context itself")] = None,
    settings: Annotated[JSONObjectArg | None, Field(description="Free-form, stored with the context")] = None,
    json_schema: Annotated[
        JSONObjectArg | None,
        Field(description="JSON Schema (2020-12) the data must satisfy on every write"),
    ] = None,
    if_exists: Annotated[
        Literal["error", "return"],
        Field(description="Name taken: error, or return the existing context unchanged"),
    ] = "error",
    event_handlers: Annotated[
        dict[str, dict[str, Any]] | None,
        Field(
            description=(
                "Per event type, for emit_event: {action: set|merge|append|increment|remove, path, value_from?: "
                "payload pointer, value?, payload_schema?, max_attempts?: 1-10} or {plugin: entry point name}"
            )
        ),
    ] = None,
    state_format: Annotated[
        str | JSONObjectArg | None,
        Field(
            description=(
                "A format file's name, or {version: current, migrations?: [{from, to, patch: RFC 6902 on "
                "data} | {from, to, plugin}], schemas?: {version: JSON Schema}}; older states are upcast on read"
            )
        ),
    ] = None,
) -> ContextOut:
    """Create a named context holding durable JSON state shared with other agents; revision 1 is
    the initial state. if_exists='return': get-or-create."""
    if state_format is not None:
        settings = {**(settings or {}), "state_format": state_format}
    initial = (
        ContextState(data=state.data, metadata=state.metadata, version=state.version) if state is not None else None
    )
    if initial is not None and state is not None and "version" not in state.model_fields_set:
        # A state given without a version is in the declared format's current version.
        initial = _current_format_state(initial, settings or {})
    result = await _manager(ctx).register(
        name,
        version=version,
        state=initial,
        metadata=metadata,
        settings=settings,
        schema=json_schema,
        handlers=event_handlers,
        if_exists=if_exists,
    )
    if isinstance(result, WriteResult):
        return ContextOut.of(result.context, created=True, sequence=result.change.sequence)
    differs = differences(
        result, version=version, metadata=metadata, settings=settings, schema=json_schema, handlers=event_handlers
    )
    return ContextOut.of(result, created=False, differs=differs)


@tool_errors
async def unregister_context(
    name: Name,
    ctx: AppCtx,
    expected_revision: ExpectedRevision = None,
    purge: Annotated[bool, Field(description="Also delete its history and change feed diffs")] = False,
    lease_token: LeaseToken = None,
) -> UnregisterOut:
    """Remove a context (history kept unless purge). Registering the name again continues its
    revision numbers."""
    manager = _manager(ctx).with_lease(lease_token)
    change = await manager.unregister(name, expected_revision=expected_revision, purge=purge)
    return UnregisterOut(name=name, revision=change.revision, sequence=change.sequence, purged=purge)


@tool_errors
async def get_context(name: Name, ctx: AppCtx) -> ContextOut:
    """Describe a context: id, versions, revision, state size, metadata, settings, schema, lease."""
    manager = _manager(ctx)
    context = await manager.get(name)
    return ContextOut.of(context, forked_from=await manager.forked_from(context), lease=await manager.lease_of(context))


@tool_errors
async def list_contexts(
    ctx: AppCtx,
    prefix: Annotated[str, Field(description="Only names starting with this", max_length=128)] = "",
    cursor: Annotated[str | None, Field(description="next_cursor of the previous page", max_length=400)] = None,
    limit: Annotated[int, Field(description="Page size", ge=1, le=100)] = 50,
) -> ListOut:
    """List your contexts by name, a page at a time."""
    page = await _manager(ctx).list(prefix=prefix, cursor=cursor, limit=limit)
    return ListOut(contexts=[summary_of(c) for c in page.contexts], next_cursor=page.next_cursor)


@tool_errors
async def get_state(
    name: Name,
    ctx: AppCtx,
    revision: Annotated[int | None, Field(description="A past revision; current when omitted", ge=1)] = None,
    path: Annotated[
        str | None,
        Field(description="JSON Pointer into data (e.g. /tasks/0): read only that part", max_length=4096),
    ] = None,
    as_of: Annotated[Timestamp | None, Field(description="The revision in force at this time")] = None,
    fields: Annotated[
        list[str] | None, Field(description="instead of path: several pointers; a sparse copy", max_length=MAX_FIELDS)
    ] = None,
    offset: Annotated[int | None, Field(ge=0, description="path is an array: items from here")] = None,
    limit: Annotated[int | None, Field(ge=1, le=1000, description="...this many (length comes back)")] = None,
) -> StateOut:
    """Read a context's state (data, metadata, timestamp, format version) and revision; pass the
    revision as expected_revision when you write. A state over the read limit comes back as
    too_large, listing its parts: read those with path."""
    manager = _manager(ctx)
    context, at, state, stored_version = await manager.read_upcast(name, revision, as_of=as_of)
    max_read = manager.limits.max_read_bytes
    out = StateOut(name=name, revision=at, current_revision=context.revision, path=path)
    if as_of is not None:
        out.as_of = format_timestamp(as_of)
    if stored_version != state.version:
        out.upcast_from = stored_version
    revision_arg = f", revision={at}" if revision is not None or as_of is not None else ""
    hint = (
        f"get_state(name={name!r}, path=<a part's path>{revision_arg}), or several parts at once with "
        "fields=[paths], or an array page by page with path, offset and limit"
    )
    if path is None and fields is None and offset is None and limit is None:
        # The current state's serialised size is stored with it: no need to serialise it to measure.
        fits = state is context.state and context.state_size <= max_read
        too_large = None if fits else bounded(state.to_json(), "", max_read)
        if too_large is not None:
            data_outline = bounded(state.data, "", 0)
            assert data_outline is not None  # a limit of 0 always outlines
            out.too_large = TooLargeOut.of(
                TooLarge(too_large.bytes, max_read, data_outline.parts, data_outline.more_parts), hint
            )
        else:
            out.state = StateValue.of(state)
        return out
    part = read_part(state.data, path=path, fields=fields, offset=offset, limit=limit)
    value, out.length, out.offset, out.missing = part.value, part.length, part.offset, part.missing
    too_large = bounded(value, path or "", max_read)
    if too_large is not None:
        out.too_large = TooLargeOut.of(too_large, hint)
    else:
        out.value = value
    return out


@tool_errors
async def update_state(
    name: Name,
    ctx: AppCtx,
    expected_revision: ExpectedRevision = None,
    data: Annotated[JSONObjectArg | None, Field(description="Replaces the whole data object")] = None,
    merge_patch: Annotated[
        JSONObjectArg | None,
        Field(description="RFC 7396: objects merge, null deletes a key, other values replace"),
    ] = None,
    patch: Annotated[
        list[PatchOperation] | None,
        Field(description="RFC 6902 operations, all or none; a failing test op aborts the write"),
    ] = None,
    metadata: Annotated[JSONObjectArg | None, Field(description="RFC 7396 merge patch of the metadata")] = None,
    lease_token: LeaseToken = None,
    release_lease: Annotated[bool, Field(description="Then release the lease")] = False,
) -> WriteOut:
    """Write a context's state as one new revision: exactly one of data, merge_patch or patch
    (metadata alone or with one). Pass the revision you read as expected_revision so no concurrent
    write is overwritten; on conflict, re-read and retry."""
    manager = _manager(ctx).with_lease(lease_token)
    result = await manager.update(
        name,
        data=data,
        merge_patch_=merge_patch,
        patch=[p.as_json() for p in patch] if patch is not None else None,
        metadata=metadata,
        expected_revision=expected_revision,
    )
    if release_lease and lease_token is not None:
        await manager.release_lease(name, lease_token)
    return _write_out(result)


@tool_errors
async def validate_state(
    name: Name,
    ctx: AppCtx,
    data: Annotated[JSONObjectArg | None, Field(description="Candidate data; the current data when omitted")] = None,
    metadata: Annotated[JSONObjectArg | None, Field(description="Candidate metadata")] = None,
) -> ValidationOut:
    """Check a candidate (or the current) state against the context's JSON Schema and the limits,
    writing nothing; lists every problem with its JSON Pointer."""
    _, issues = await _manager(ctx).check(name, data=data, metadata=metadata)
    return ValidationOut(
        name=name,
        valid=not issues,
        errors=[ValidationIssueOut(pointer=i.pointer, message=i.message) for i in issues],
    )


@tool_errors
async def get_history(
    name: Name,
    ctx: AppCtx,
    before: Annotated[int | None, Field(description="Only revisions older than this (paging)", ge=1)] = None,
    limit: Annotated[int, Field(description="Page size", ge=1, le=100)] = 20,
    since: Annotated[Timestamp | None, Field(description="From this time")] = None,
    until: Annotated[Timestamp | None, Field(description="Before this time")] = None,
) -> HistoryOut:
    """List a context's revisions, newest first: who wrote each, when, how, and its size."""
    manager = _manager(ctx)
    context = await manager.get(name)
    entries = await manager.history(name, before=before, limit=limit, since=since, until=until)
    next_before = entries[-1].revision if len(entries) == limit and entries[-1].revision > 1 else None
    return HistoryOut(
        name=name,
        current_revision=context.revision,
        revisions=[RevisionOut.of(e) for e in entries],
        next_before=next_before,
    )


@tool_errors
async def diff_states(
    name: Name,
    ctx: AppCtx,
    from_revision: Annotated[
        Annotated[int, Field(ge=1)] | Timestamp | None,
        Field(description="A revision, or an RFC 3339 time: the revision in force then"),
    ] = None,
    to_revision: Annotated[
        Annotated[int, Field(ge=1)] | Timestamp | None, Field(description="Likewise; current when omitted")
    ] = None,
) -> DiffOut:
    """The RFC 6902 patch between two revisions of a context (paths under /data, /metadata)."""
    start, end, patch = await _manager(ctx).diff_between(
        name,
        from_revision if isinstance(from_revision, int) else None,
        to_revision if isinstance(to_revision, int) else None,
        from_as_of=from_revision if isinstance(from_revision, datetime) else None,
        to_as_of=to_revision if isinstance(to_revision, datetime) else None,
    )
    return DiffOut(name=name, from_revision=start, to_revision=end, patch=patch)


@tool_errors
async def rollback_state(
    name: Name,
    revision: Revision,
    ctx: AppCtx,
    expected_revision: ExpectedRevision = None,
    lease_token: LeaseToken = None,
) -> WriteOut:
    """Undo: restore an earlier revision's data and metadata as a new revision (history is kept,
    so a rollback can be undone too)."""
    manager = _manager(ctx).with_lease(lease_token)
    return _write_out(await manager.rollback(name, revision, expected_revision=expected_revision))


@tool_errors
async def wait_for_change(
    ctx: AppCtx,
    contexts: Annotated[
        list[Name] | None, Field(description="Names to watch; all when omitted", max_length=100)
    ] = None,
    after_sequence: Annotated[
        int | None,
        Field(
            description="A previous call's cursor: changes after it; from now when omitted",
            ge=0,
        ),
    ] = None,
    timeout: Annotated[float, Field(description="Seconds to wait", ge=0, le=60)] = 30,  # noqa: ASYNC109
    limit: Annotated[int, Field(description="At most this many changes", ge=1, le=100)] = 100,
    paths: Annotated[
        list[str] | None,
        Field(description="JSON Pointers: only changes touching one", max_length=32),
    ] = None,
) -> ChangesOut:
    """Wait until a context changes (by anyone, any process) and return the changes; an empty list
    when timeout passes first. Pass the cursor as after_sequence next time: nothing is missed or
    seen twice."""
    changes, cursor = await _manager(ctx).wait_for_changes(
        contexts, after_sequence=after_sequence, timeout=timeout, limit=limit, paths=paths
    )
    return ChangesOut(changes=[ChangeOut.of(c) for c in changes], cursor=cursor, timed_out=not changes)


@tool_errors
async def emit_event(
    name: Name,
    type: Annotated[
        str, Field(description="Event type; the context needs a handler for it", min_length=1, max_length=128)
    ],
    ctx: AppCtx,
    payload: Annotated[JSONObjectArg | None, Field(description="Event data, at most 256 KiB")] = None,
    idempotency_key: Annotated[
        str | None,
        Field(description="The same key again (a retry) applies the event only once", max_length=200),
    ] = None,
    lease_token: LeaseToken = None,
) -> EventOut:
    """Send an event to a context: its handler turns it into a state change, committed atomically
    with the event. A handler that keeps failing changes nothing and leaves the event in the dead
    letters."""
    result = (
        await _manager(ctx)
        .with_lease(lease_token)
        .emit_event(name, Event(type=type, payload=payload or {}, idempotency_key=idempotency_key))
    )
    return EventOut.of(result)


@tool_errors
async def list_dead_letters(
    ctx: AppCtx,
    name: Annotated[str | None, Field(description="Only this context's", pattern=NAME_PATTERN)] = None,
    after_id: Annotated[int, Field(description="Only ids above this (paging)", ge=0)] = 0,
    limit: Annotated[int, Field(description="Page size", ge=1, le=100)] = 50,
    include_replayed: Annotated[bool, Field(description="Also those already replayed")] = False,
) -> DeadLettersOut:
    """Events whose handler kept failing, with the last error: fix the cause, then replay them."""
    letters = await _manager(ctx).list_dead_letters(
        name=name, after_id=after_id, limit=limit, include_replayed=include_replayed
    )
    return DeadLettersOut(
        dead_letters=[DeadLetterOut.of(d) for d in letters],
        next_after_id=letters[-1].id if len(letters) == limit else None,
    )


@tool_errors
async def replay_dead_letter(
    id: Annotated[int, Field(description="Dead letter id", ge=1)],
    ctx: AppCtx,
) -> EventOut:
    """Handle a dead-lettered event again; it applies at most once, even if replayed twice."""
    return EventOut.of(await _manager(ctx).replay_dead_letter(id))


@tool_errors
async def get_metrics(
    ctx: AppCtx,
    names: Annotated[list[Name] | None, Field(description="Only these contexts", max_length=100)] = None,
    prefix: Annotated[str, Field(description="Only names starting with this", max_length=128)] = "",
    limit: Annotated[int, Field(description="At most this many contexts", ge=1, le=100)] = 100,
) -> MetricsOut:
    """Metrics per context (updates, events, open dead letters, size, write and handler latency,
    errors) and of the server (uptime, memory, database size, subscriptions, errors)."""
    app = _app(ctx)
    manager = _manager(ctx)
    server, contexts = await manager.collect_metrics(names, prefix=prefix, limit=limit)
    server["open_subscriptions"] = app.notifier.subscription_count(manager.principal.namespace)
    return MetricsOut.of(server, contexts)


def _current_format_state(state: ContextState, settings: dict[str, Any]) -> ContextState:
    try:
        declared = format_of(settings)
    except (ContextError, ValueError, RecursionError):
        return state  # register() reports what is wrong with the declaration, by field

    return replace(state, version=declared.version) if declared is not None else state


@tool_errors
async def migrate_context(
    ctx: AppCtx,
    name: Annotated[str | None, Field(description="The context to migrate", pattern=NAME_PATTERN)] = None,
    prefix: Annotated[
        str | None,
        Field(description="Instead of name: all names starting with this ('' = all)", max_length=128),
    ] = None,
    to_version: Annotated[
        str | None,
        Field(description="Target format version; the context's current one when omitted", pattern=SEMVER_PATTERN),
    ] = None,
    dry_run: Annotated[bool, Field(description="Show the RFC 6902 diff per context; write nothing")] = False,
    expected_revision: Annotated[
        int | None, Field(description="With name: the revision you last read (compare-and-set)", ge=1)
    ] = None,
) -> MigrateOut:
    """Rewrite states in their context's current format version (state_format), a new revision
    each (reads upcast on the fly; this makes it permanent). All are upcast and validated first:
    one failure writes nothing and is named. Try dry_run first."""

    async def progress(done: int, total: int | None, message: str) -> None:
        await ctx.report_progress(done, total, message)

    report = await _manager(ctx).migrate(
        name,
        prefix=prefix,
        to_version=to_version,
        dry_run=dry_run,
        expected_revision=expected_revision,
        progress=progress,
    )
    return MigrateOut.of(report)


_READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
_WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
_DESTRUCTIVE = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
)

_TOOLS: tuple[tuple[Callable[..., Awaitable[Any]], str, ToolAnnotations], ...] = (
    (register_context, "Register context", _WRITE),
    (unregister_context, "Unregister context", _DESTRUCTIVE),
    (get_context, "Get context", _READ_ONLY),
    (list_contexts, "List contexts", _READ_ONLY),
    (get_state, "Get state", _READ_ONLY),
    (update_state, "Update state", _WRITE),
    (validate_state, "Validate state", _READ_ONLY),
    (get_history, "Get history", _READ_ONLY),
    (diff_states, "Diff revisions", _READ_ONLY),
    (rollback_state, "Roll back state", _DESTRUCTIVE),
    (wait_for_change, "Wait for a change", _READ_ONLY),
    (emit_event, "Emit event", _WRITE),
    (list_dead_letters, "List dead letters", _READ_ONLY),
    (replay_dead_letter, "Replay dead letter", _WRITE),
    (get_metrics, "Get metrics", _READ_ONLY),
    (migrate_context, "Migrate state format", _DESTRUCTIVE),
)


def register_tools(server: MCPServer[AppContext]) -> None:
    for fn, title, hints in _TOOLS:
        description = inspect.cleandoc(fn.__doc__ or "")
        server.add_tool(
            fn,
            title=title,
            description=description,
            annotations=hints,
            meta=ui_meta(fn.__name__),
            structured_output=True,
        )
