"""Reads of past revisions and state formats: upcasting a stored state to its context's current
format version (cached), and the checks every written state passes."""

from __future__ import annotations

import asyncio
import copy
import dataclasses

from groundhog_mcp.errors import CompactedError, NotFoundError, ValidationIssue
from groundhog_mcp.models import ContextState, JSONObject, dumps
from groundhog_mcp.service.migration import UpcastCache, format_of, upcast
from groundhog_mcp.service.validation import Limits, inspect_state, raise_if_invalid, schema_issues
from groundhog_mcp.store.base import Store, StoredContext

__all__ = ["StateReader", "check_written", "format_version", "state_issues"]


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
    state_format = format_of(settings)
    if state_format is None:
        return inspect_state(state, limits, schema, structure_known_valid=structure_known_valid)
    problem = state_format.version_problem(state.version)
    if problem is not None:
        return [ValidationIssue("/version", problem)]
    schemas = state_format.schemas_for(state.version, schema)
    issues = inspect_state(state, limits, schemas[0] if schemas else None, structure_known_valid=structure_known_valid)
    for extra in schemas[1:]:
        issues += [ValidationIssue("/data" + i.pointer, i.message) for i in schema_issues(extra, state.data)]
    return issues


def check_written(
    state: ContextState, context: StoredContext, limits: Limits, *, structure_known_valid: bool = False
) -> None:
    """Raise unless ``state`` may be written to ``context`` (its limits, schema and format)."""
    raise_if_invalid(
        state_issues(state, context.schema, context.settings, limits, structure_known_valid=structure_known_valid),
        "state",
    )


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
