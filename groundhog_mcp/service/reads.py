"""Reads: loading, past revisions, diffs and history; state formats: upcasting a stored state to its context's current
format version (cached), and the checks every written state passes."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from groundhog_mcp.errors import CompactedError, NotFoundError, StateValidationError, ValidationIssue
from groundhog_mcp.models import ContextId, ContextState, HistoryEntry, JSONObject, dumps
from groundhog_mcp.service.access import readable_history
from groundhog_mcp.service.branches import state_as_of
from groundhog_mcp.service.migration import UpcastCache, format_of, upcast
from groundhog_mcp.service.validation import (
    Limits,
    check_limit,
    inspect_state_text,
    raise_if_invalid,
    schema_issues,
    small_json,
)
from groundhog_mcp.service.writes import state_diff
from groundhog_mcp.store.base import Store, StoredContext

if TYPE_CHECKING:
    from groundhog_mcp.service.state import StateManager

__all__ = [
    "StateReader",
    "check",
    "check_written",
    "diff",
    "format_version",
    "history",
    "load_state",
    "read_upcast",
    "state_issues",
]


def state_issues(
    state: ContextState,
    schema: JSONObject | None,
    settings: JSONObject,
    limits: Limits,
    *,
    structure_known_valid: bool = False,
) -> list[ValidationIssue]:
    """Limits and schema; with a declared state format, the version must be one of the format's
    and the data is checked against the schema(s) of that version."""
    return _state_issues(state, schema, settings, limits, structure_known_valid=structure_known_valid)[0]


def _state_issues(
    state: ContextState,
    schema: JSONObject | None,
    settings: JSONObject,
    limits: Limits,
    *,
    structure_known_valid: bool,
) -> tuple[list[ValidationIssue], str | None]:
    state_format = format_of(settings)
    if state_format is None:
        return inspect_state_text(state, limits, schema, structure_known_valid=structure_known_valid)
    problem = state_format.version_problem(state.version)
    if problem is not None:
        return [ValidationIssue("/version", problem)], None
    schemas = state_format.schemas_for(state.version, schema)
    issues, text = inspect_state_text(
        state, limits, schemas[0] if schemas else None, structure_known_valid=structure_known_valid
    )
    for extra in schemas[1:]:
        issues += [ValidationIssue("/data" + i.pointer, i.message) for i in schema_issues(extra, state.data)]
    return issues, text


def check_written(
    state: ContextState, context: StoredContext, limits: Limits, *, structure_known_valid: bool = False
) -> str:
    """Raise unless ``state`` may be written to ``context`` (its limits, schema and format).

    Returns the state serialised (``dumps(state.to_json())``, made for the size limit): pass it
    on as :attr:`~groundhog_mcp.store.base.Mutation.text` so the store does not serialise again."""
    issues, text = _state_issues(
        state, context.schema, context.settings, limits, structure_known_valid=structure_known_valid
    )
    raise_if_invalid(issues, "state")
    assert text is not None  # a state without issues was serialised for its size
    return text


def cheap_on(context: StoredContext) -> bool:
    """Whether applying small inputs to ``context`` is cheap: no JSON Schema to check, no state
    format to upcast (plugin code). The store runs a cheap mutation inside the transaction."""
    return context.schema is None and format_of(context.settings) is None


def inline_if_small(*inputs: Any) -> Callable[[StoredContext], bool] | None:
    """The ``inline`` argument of a write whose mutation is made of ``inputs`` (JSON values):
    :func:`cheap_on` when they are small (:func:`~groundhog_mcp.service.validation.small_json`),
    else ``None`` (the store prepares the mutation in a worker thread first)."""
    return cheap_on if small_json(*inputs) else None


def format_version(context: StoredContext) -> str | None:
    state_format = format_of(context.settings)
    return state_format.version if state_format is not None else None


class StateReader:
    """Past revisions of a context, and states in the context's current format version."""

    def __init__(self, store: Store, limits: Limits, upcasts: UpcastCache) -> None:
        self.store = store
        self.limits = limits
        self.upcasts = upcasts

    def upcast(self, context: StoredContext, state: ContextState, revision: int | None = None) -> ContextState:
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

    async def upcast_off_loop(
        self, context: StoredContext, state: ContextState, revision: int | None = None
    ) -> ContextState:
        """:meth:`upcast` in a worker thread unless there is nothing to run (no format, or cached)."""
        state_format = format_of(context.settings)
        if state_format is None or state.version == state_format.version:
            return state
        return await asyncio.to_thread(self.upcast, context, state, revision)

    async def upcast_context_off_loop(self, context: StoredContext) -> StoredContext:
        """:meth:`upcast_context`, in a worker thread unless the context declares no state format."""
        if format_of(context.settings) is None:
            return context
        return await asyncio.to_thread(self.upcast_context, context)

    def upcast_context(self, context: StoredContext) -> StoredContext:
        state = self.upcast(context, context.state)
        if state is context.state:
            return context
        # A handler may change what it reads in place: give it its own copy, not the cached one.
        return dataclasses.replace(context, state=copy.deepcopy(state))

    async def revision_state(self, context: StoredContext, revision: int, field: str = "revision") -> ContextState:
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


async def load_state(manager: StateManager, context_id: ContextId) -> ContextState:
    """The current state of the context with id ``context_id`` (the specification's ``load_state``)."""
    missing = f"context_id: no context with id {context_id}"
    # The name first (nothing decoded), the grant on it, and only then the context itself.
    located = await manager.store.locate(context_id)
    if located is None or located[0] != manager.principal.namespace:
        raise NotFoundError(missing)
    await manager.authorize("read", located[1], missing=missing, itemize=False)
    stored = await manager.store.get_by_id(context_id)
    if stored is None:  # unregistered in between
        raise NotFoundError(missing)
    return await manager.reader.upcast_off_loop(stored, stored.state)


async def read_upcast(
    manager: StateManager, name: str, revision: int | None = None, *, as_of: datetime | None = None
) -> tuple[StoredContext, int, ContextState, str]:
    """Like ``StateManager.read``, plus the format version the state is stored in."""
    context = await manager.get(name)
    if as_of is not None:
        if revision is not None:
            raise StateValidationError([ValidationIssue("", "give revision or as_of, not both")], field="as_of")
        at, stored = await state_as_of(manager, context, as_of)
    elif revision is None or revision == context.revision:
        at, stored = context.revision, context.state
    else:
        at, stored = revision, await manager.reader.revision_state(context, revision)
    return context, at, await manager.reader.upcast_off_loop(context, stored, at), stored.version


async def check(
    manager: StateManager, name: str, *, data: JSONObject | None = None, metadata: JSONObject | None = None
) -> tuple[StoredContext, list[ValidationIssue]]:
    """Validate a candidate (or the current) state of ``name`` without writing."""
    context = await manager.get(name)
    current = await manager.reader.upcast_off_loop(context, context.state)
    candidate = ContextState(
        data=current.data if data is None else data,
        metadata=current.metadata if metadata is None else metadata,
        timestamp=current.timestamp,
        version=current.version,
    )
    issues = await asyncio.to_thread(state_issues, candidate, context.schema, context.settings, manager.limits)
    return context, issues


async def history(
    manager: StateManager,
    name: str,
    *,
    before: int | None = None,
    limit: int = 20,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[HistoryEntry]:
    """Revisions newest first (``before``: older than it; ``since``/``until``: committed at or
    after / before these times); each names what it was forked or merged from."""
    check_limit(limit, manager.limits.max_history_page)
    context = await manager.get(name)
    entries = await manager.store.history(context.id, before=before, limit=limit, since=since, until=until)
    return readable_history(manager.principal, entries)


async def diff(
    manager: StateManager,
    name: str,
    from_revision: int | None,
    to_revision: int | None = None,
    *,
    from_as_of: datetime | None = None,
    to_as_of: datetime | None = None,
) -> tuple[int, int, list[JSONObject]]:
    """Like ``StateManager.diff``, with the two revisions compared: ``(from, to, patch)``."""
    if (from_revision is None) == (from_as_of is None):
        raise StateValidationError(
            [ValidationIssue("", "give exactly one of from_revision or from_as_of")], field="from_revision"
        )
    if to_revision is not None and to_as_of is not None:
        raise StateValidationError([ValidationIssue("", "give to_revision or to_as_of, not both")], field="to_revision")
    context = await manager.get(name)
    if from_as_of is not None:
        from_revision, source = await state_as_of(manager, context, from_as_of, field="from_as_of")
    else:
        assert from_revision is not None
        source = await manager.reader.revision_state(context, from_revision, field="from_revision")
    if to_as_of is not None:
        to_revision, target = await state_as_of(manager, context, to_as_of, field="to_as_of")
    elif to_revision is None or to_revision == context.revision:
        to_revision, target = context.revision, context.state
    else:
        target = await manager.reader.revision_state(context, to_revision, field="to_revision")
    # Proportional to two whole states: computed in a worker thread, not on the event loop.
    return from_revision, to_revision, await asyncio.to_thread(state_diff, source, target)
