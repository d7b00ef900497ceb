"""Branches and time: fork a context, find a merge's base from lineage, read a context as of a
moment, and tell whether a change touches a watched path.

The :class:`~groundhog_mcp.service.state.StateManager` methods ``fork``, ``read_upcast(as_of=…)``,
``history(since=…, until=…)``, ``diff`` with times, ``merge`` (three-way without a base) and
``wait_for_changes(paths=…)`` delegate here; the store core does the one-transaction parts for
both backends (the fork's registration with its lineage row, the merge's lineage rows, the
index seek by commit time).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from groundhog_mcp.errors import CompactedError, ConflictError, NotFoundError, StateValidationError, ValidationIssue
from groundhog_mcp.models import Change, ContextState, JSONObject, Parent, format_timestamp
from groundhog_mcp.service.lineage import Point, forked_from, merge_base_candidates
from groundhog_mcp.service.merge import SourceInfo
from groundhog_mcp.service.validation import check_name
from groundhog_mcp.store.base import FEED_PATCH_MAX_OPS, ParentRef, StoredContext, StoredRevision

if TYPE_CHECKING:
    from groundhog_mcp.service.state import StateManager, WriteResult

__all__ = [
    "MAX_MATCHED_OPERATIONS",
    "MAX_WATCH_PATHS",
    "TargetMoved",
    "context_lineage",
    "fork_context",
    "merge_base",
    "merge_parents",
    "parse_watch_paths",
    "state_as_of",
    "touches",
]

MAX_WATCH_PATHS = 32
MAX_MATCHED_OPERATIONS = 1_000
"""A diff with more operations touches every watched path (bounded matching work per change)."""
_MAX_POINTER_CHARS = 1024


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
    state = await manager.revision_state(source, at)
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
    """Where ``context`` was forked from (None: it was registered, not forked)."""
    edges = await manager.store.lineage(context.namespace, [context.id], limit=1_000)
    return forked_from(edges)


# -- merge base -----------------------------------------------------------------------------------


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
        await manager.authorize("read", point.name)
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
        state = await manager.upcast(known, state, point.revision)
    return state, SourceInfo(point.name, point.revision)


def merge_parents(
    contexts: dict[str, StoredContext], inputs: Sequence[SourceInfo], target: StoredContext
) -> tuple[ParentRef, ...]:
    """The lineage rows of a merge written to ``target``: each other context's revision it took in."""
    taken: dict[str, int] = {}
    for info in inputs:
        if info.context and info.revision and info.context != target.name:
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


# -- path watches ---------------------------------------------------------------------------------


def _tokens(pointer: str) -> tuple[str, ...]:
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]) if pointer else ()


def parse_watch_paths(paths: Sequence[str] | None, field: str = "paths") -> tuple[tuple[str, ...], ...] | None:
    """Watched JSON Pointers into the state document (``/data/...``, ``/metadata/...``), as tokens."""
    if paths is None:
        return None
    if not 1 <= len(paths) <= MAX_WATCH_PATHS:
        raise StateValidationError(
            [ValidationIssue("", f"give 1 to {MAX_WATCH_PATHS} JSON Pointers; got {len(paths)}")], field=field
        )
    parsed: list[tuple[str, ...]] = []
    for i, path in enumerate(paths):
        if len(path) > _MAX_POINTER_CHARS or (path and not path.startswith("/")):
            raise StateValidationError(
                [
                    ValidationIssue(
                        "",
                        f"must be a JSON Pointer into the state document starting with / (e.g. /data/plan), "
                        f"at most {_MAX_POINTER_CHARS} characters",
                    )
                ],
                field=f"{field}[{i}]",
            )
        parsed.append(_tokens(path))
    return tuple(parsed)


def _related(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """One path is the other, an ancestor or a descendant of it."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def touches(change: Change, watched: tuple[tuple[str, ...], ...]) -> bool:
    """Whether ``change`` touches a watched path (the path itself, an ancestor or a descendant).

    A change without a diff (register, unregister, fork, import), a diff the change feed kept only
    in part (the first operations of a large one) and a diff of more than
    :data:`MAX_MATCHED_OPERATIONS` operations count as touching every path."""
    patch = change.patch
    if patch is None or len(patch) > MAX_MATCHED_OPERATIONS or _maybe_truncated(patch):
        return True
    for op in patch:
        for key in ("path", "from"):
            pointer = op.get(key)
            if isinstance(pointer, str) and any(_related(_tokens(pointer), w) for w in watched):
                return True
    return False


def _maybe_truncated(patch: list[JSONObject]) -> bool:
    # feed_patch keeps op and path only (no values) of a large diff, and then only the first
    # FEED_PATCH_MAX_OPS operations: with that many, more may have been dropped.
    return len(patch) >= FEED_PATCH_MAX_OPS and all(set(op) <= {"op", "path"} for op in patch)
