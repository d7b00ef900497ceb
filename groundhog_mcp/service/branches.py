"""Branches and time: fork a context, find a merge's base from lineage, read a context as of a
moment (path watches: :mod:`groundhog_mcp.service.paths`).

``StateManager.fork`` and ``forked_from`` delegate here; ``reads`` (``as_of``, ``since``/``until``,
diffs by time) and ``merging`` (three-way without a base) call in; the store core does the
one-transaction parts for both backends (the fork's registration with its lineage row, the merge's lineage rows, the
index seek by commit time).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from groundhog_mcp.errors import CompactedError, ConflictError, NotFoundError, StateValidationError, ValidationIssue
from groundhog_mcp.models import ContextState, JSONObject, Parent, format_timestamp
from groundhog_mcp.service.access import readable_parents
from groundhog_mcp.service.lineage import Point, forked_from, merge_base_candidates
from groundhog_mcp.service.merge import SourceInfo
from groundhog_mcp.service.validation import check_name
from groundhog_mcp.store.base import ParentRef, StoredContext, StoredRevision

if TYPE_CHECKING:
    from groundhog_mcp.service.state import StateManager
    from groundhog_mcp.service.writes import WriteResult

__all__ = [
    "TargetMoved",
    "context_lineage",
    "context_parents",
    "fork_context",
    "merge_base",
    "merge_parents",
    "state_as_of",
]


# -- fork -----------------------------------------------------------------------------------------


async def fork_context(
    manager: StateManager,
    name: str,
    new_name: str,
    *,
    revision: int | None = None,
    version: str | None = None,
    metadata: JSONObject | None = None,
    settings: JSONObject | None = None,
    schema: JSONObject | None = None,
    handlers: JSONObject | None = None,
) -> WriteResult:
    """A new context ``new_name`` whose state is ``name``'s at ``revision`` (current when None),
    with ``name``'s definition unless overridden; its first revision records the fork point.
    One state copy: the source's history is not copied."""
    check_name(new_name, field="new_name")
    source = await manager.get(name)  # read grant on the source, as get_state
    at = source.revision if revision is None else revision
    state = await manager.reader.revision_state(source, at)
    try:
        result = await manager.register(
            new_name,
            version=source.version if version is None else version,
            state=state,
            metadata=source.metadata if metadata is None else metadata,
            settings=source.settings if settings is None else settings,
            schema=source.schema if schema is None else schema,
            handlers=source.handlers if handlers is None else handlers,
            if_exists="error",
            forked_from=ParentRef(source.id, Parent("fork", source.name, at)),
        )
    except ConflictError as exc:
        raise ConflictError.already_exists(new_name, exc.current_revision or 0, field="new_name") from None
    assert not isinstance(result, StoredContext)  # if_exists="error" never returns an existing context
    return result


async def context_lineage(manager: StateManager, context: StoredContext) -> Parent | None:
    """Where ``context`` was forked from (None: it was registered, not forked, or forked from a
    context the manager's principal may not read: lineage never names a context it may not read)."""
    edges = await manager.store.lineage(context.namespace, [context.id], limit=1_000)
    parent = forked_from(edges)
    return parent if parent is not None and readable_parents(manager.principal, [parent]) else None


async def context_parents(manager: StateManager, context: StoredContext) -> tuple[Parent, ...]:
    """The fork point and merge inputs of ``context``'s revisions, oldest first, among the
    contexts ``manager``'s principal may read (at most the first 1,000 lineage rows)."""
    edges = await manager.store.lineage(context.namespace, [context.id], limit=1_000)
    return readable_parents(manager.principal, [e.ref.parent for e in edges])


# -- merge base -----------------------------------------------------------------------------------


_HIDDEN_BASE = (
    "base: the merge base of these inputs (from their lineage) is in a context you may not read; pass base explicitly"
)


class TargetMoved(Exception):
    """A three-way merge into one of its inputs found the target moved on inside the write: its
    base, found from lineage for the revision first read, may be stale. Nothing was written."""


async def merge_base(
    manager: StateManager, contexts: dict[str, StoredContext], inputs: Sequence[SourceInfo]
) -> tuple[ContextState, SourceInfo] | None:
    """The base of a three-way merge of context revisions ``inputs``, from their lineage: the fork
    point or the last merge between them (None: no common ancestor). Read with a read grant on
    the base's context, like any input."""
    heads = [Point(contexts[i.context].id, i.context, i.revision) for i in inputs if i.context and i.revision]
    candidates = await merge_base_candidates(manager.store, manager.principal.namespace, heads)
    best: tuple[StoredRevision, Point] | None = None
    for point in candidates:
        # Not named when unreadable: the reader may not learn the hidden context's name.
        await manager.authorize("read", point.name, missing=_HIDDEN_BASE)
        found = await manager.store.read_revision(point.id, point.revision)
        if isinstance(found, int):
            raise CompactedError(point.name, point.revision, found)
        if found is None:
            raise NotFoundError(
                f"base: the merge base, revision {point.revision} of context {point.name!r}, was purged; "
                "pass base explicitly"
            )
        if best is None or found.entry.sequence > best[0].entry.sequence:
            best = (found, point)
    if best is None:
        return None
    found, point = best
    known = contexts.get(point.name)
    state = found.state
    if known is not None and known.id == point.id:  # in the context's current format, like the inputs
        state = await manager.reader.upcast_off_loop(known, state, point.revision)
    return state, SourceInfo(point.name, point.revision)


def merge_parents(
    contexts: dict[str, StoredContext], inputs: Sequence[SourceInfo], target: str
) -> tuple[ParentRef, ...]:
    """The lineage rows of a merge written to context ``target`` (existing or created by the merge):
    each other context's revision it took in."""
    taken: dict[str, int] = {}
    for info in inputs:
        if info.context and info.revision and info.context != target:
            taken[info.context] = max(taken.get(info.context, 0), info.revision)
    return tuple(
        ParentRef(contexts[name].id, Parent("merge", name, revision))
        for name, revision in sorted(taken.items())
        if name in contexts
    )


# -- time travel ----------------------------------------------------------------------------------


async def state_as_of(
    manager: StateManager, context: StoredContext, at: datetime, field: str = "as_of"
) -> tuple[int, ContextState]:
    """``(revision, state)`` in force at ``at``: the last revision committed at or before it."""
    if at.tzinfo is None:
        raise StateValidationError([ValidationIssue("", "must be an RFC 3339 time with a UTC offset")], field=field)
    if at >= context.updated_at:
        return context.revision, context.state
    if at < context.created_at:
        raise NotFoundError(
            f"{field}: context {context.name!r} did not exist at {format_timestamp(at)}; "
            f"it was created at {format_timestamp(context.created_at)}"
        )
    found = await manager.store.revision_at(context.id, at)
    if isinstance(found, StoredRevision):
        return found.entry.revision, found.state
    if found is None:
        raise NotFoundError(f"{field}: context {context.name!r} has no history (purged)")
    raise CompactedError.at_time(context.name, format_timestamp(at), found, field=field)
