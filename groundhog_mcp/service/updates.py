"""The name-addressed writes: register, save_state, update (replace, merge patch, JSON Patch,
metadata) and rollback, each checked off the event loop and committed through the
:class:`~groundhog_mcp.service.writes.Writer` as the manager's caller."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Literal

from groundhog_mcp.errors import ConflictError, NotFoundError, StateValidationError, ValidationIssue
from groundhog_mcp.models import Change, ContextId, ContextState, JSONObject, utcnow
from groundhog_mcp.service.definition import check_definition
from groundhog_mcp.service.expiry import expire_if_due, resolve_expiry_settings
from groundhog_mcp.service.migration import dry_run_chains
from groundhog_mcp.service.patching import apply_json_patch, merge_patch
from groundhog_mcp.service.reads import cheap_on, check_written, format_version, inline_if_small, state_issues
from groundhog_mcp.service.search import declared_indexes
from groundhog_mcp.service.validation import (
    SMALL_INPUT_COST,
    check_json_inputs,
    check_name,
    check_semver,
    raise_if_invalid,
)
from groundhog_mcp.service.writes import WriteResult, mutation
from groundhog_mcp.store.base import Mutation, NewContext, ParentRef, StoredContext

if TYPE_CHECKING:
    from groundhog_mcp.service.state import StateManager

__all__ = ["register", "rollback", "save_state", "unregister", "update"]


async def save_state(
    manager: StateManager, context_id: ContextId, state: ContextState, *, expected_revision: int | None = None
) -> WriteResult:
    """Store ``state`` as the context's new revision, exactly as given.

    A context id not seen before is created (named after the id), as the
    specification's ``save_state`` on a fresh ``ContextId`` expects.
    """
    await manager.validate_state(state)
    located = await manager.store.locate(context_id)  # the name only: nothing decoded before the grant check
    await manager.authorize("write", located[1] if located is not None else str(context_id))
    if located is None:
        created = await manager.writer.register(
            manager.caller,
            NewContext(
                id=context_id,
                namespace=manager.principal.namespace,
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
        text = check_written(state, current, manager.limits)
        return mutation(current, state, text=text)

    return await manager.writer.mutate(manager.caller, located[1], expected_revision, replace_state)


async def register(
    manager: StateManager,
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
    forked_from: ParentRef | None = None,
    merged_from: tuple[ParentRef, ...] = (),
) -> WriteResult | StoredContext:
    """See :meth:`groundhog_mcp.service.state.StateManager.register` (``forked_from``: set by a fork;
    ``merged_from``: by a merge that creates its target, the revisions it took in)."""
    check_name(name)
    await manager.authorize("write", name)
    check_semver(version)
    metadata = metadata or {}
    settings = resolve_expiry_settings(settings or {})

    def checked_state() -> ContextState:
        # Schemas, formats and states from a client: checked in a worker thread, never on the loop.
        state_format = check_definition(
            manager.limits, metadata=metadata, settings=settings, schema=schema, handlers=handlers
        )
        initial = state or ContextState(version=state_format.version if state_format else "1.0.0")
        if state_format is not None:
            state_format.check_plugins()
            dry_run_chains(state_format, manager.limits, initial)
        raise_if_invalid(state_issues(initial, schema, settings, manager.limits), "state")
        return initial

    state = await asyncio.to_thread(checked_state)
    await manager.store.ensure_search_indexes(declared_indexes(settings))
    new = NewContext(
        id=context_id or uuid.uuid4(),
        namespace=manager.principal.namespace,
        name=name,
        version=version,
        metadata=metadata,
        settings=settings,
        schema=schema,
        handlers=handlers or {},
        state=state,
        forked_from=forked_from,
        merged_from=merged_from,
    )
    return await manager.writer.register(manager.caller, new, if_exists=if_exists)


async def update(
    manager: StateManager,
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
    await manager.authorize("write", name)
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

    inputs = (("data", data), ("merge_patch", merge_patch_), ("patch", patch), ("metadata", metadata))
    # One walk checks small inputs here (a hop to a thread would cost more than it) and tells
    # whether they are small; larger ones are checked in a worker thread.
    small = check_json_inputs(inputs, manager.limits, budget=SMALL_INPUT_COST)
    if not small:
        await asyncio.to_thread(check_json_inputs, inputs, manager.limits)
    if version is not None:
        check_semver(version)
    if expected_revision == 0:
        return await _create_from_update(manager, name, data, merge_patch_, patch, metadata, version)

    def apply(current: StoredContext) -> Mutation:
        # Patches apply to what reads return; a replace needs no upcast (upcasters keep metadata).
        base = current.state if data is not None else manager.reader.upcast(current, current.state)
        new_data: JSONObject = base.data
        if data is not None:
            new_data = data
        elif merge_patch_ is not None:
            new_data = merge_patch(base.data, merge_patch_)
        elif patch is not None:
            new_data = apply_json_patch(base.data, patch, max_copy_bytes=manager.limits.max_state_bytes)
        new_metadata = base.metadata if metadata is None else merge_patch(base.metadata, metadata)
        state = ContextState(
            data=new_data,
            metadata=new_metadata,
            timestamp=utcnow(),
            version=version or format_version(current) or base.version,
        )
        # A replace or merge only puts checked input values at the paths they had in the input
        # (depth included): the structural walk can be skipped. A JSON Patch can move values
        # anywhere, so its result is walked.
        text = check_written(state, current, manager.limits, structure_known_valid=patch is None)
        return mutation(current, state, text=text)

    return await manager.writer.mutate(
        manager.caller,
        name,
        expected_revision,
        apply,
        detail=", ".join(given) or "metadata",
        inline=cheap_on if small else None,
    )


async def _create_from_update(
    manager: StateManager,
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
            data = apply_json_patch({}, patch, max_copy_bytes=manager.limits.max_state_bytes)
    state = ContextState(data=data or {}, metadata=merge_patch(None, metadata or {}), version=version or "1.0.0")
    try:
        result = await manager.register(name, state=state, if_exists="error")
    except ConflictError as exc:
        raise ConflictError(name, 0, exc.current_revision) from None
    assert isinstance(result, WriteResult)  # if_exists="error" never returns an existing context
    return result


async def rollback(
    manager: StateManager, name: str, revision: int, *, expected_revision: int | None = None
) -> WriteResult:
    """Restore ``revision``'s data and metadata as a *new* revision."""
    check_name(name)
    await manager.authorize("write", name)
    context = await manager.get(name)
    old = await manager.reader.revision_state(context, revision)

    def restore(current: StoredContext) -> Mutation:
        state = ContextState(data=old.data, metadata=old.metadata, timestamp=utcnow(), version=old.version)
        text = check_written(state, current, manager.limits)
        return mutation(current, state, op="rollback", text=text)

    return await manager.writer.mutate(
        manager.caller,
        name,
        expected_revision,
        restore,
        detail=f"restores revision {revision}",
        inline=inline_if_small(old.data, old.metadata),
    )


async def unregister(
    manager: StateManager, name: str, *, expected_revision: int | None = None, purge: bool = False
) -> Change:
    """Remove context ``name`` (needs ``admin``); its history stays until retention prunes it,
    unless ``purge`` deletes it now."""
    check_name(name)
    await manager.authorize("admin", name)
    try:
        return await manager.writer.committed(
            manager.store.unregister(
                manager.principal.namespace,
                name,
                expected_revision,
                purge=purge,
                actor=manager.principal.name,
                audit=manager.audit.note(manager.caller, "purge" if purge else None),
                lease_token=manager.caller.lease_token,
            ),
            lambda c: c,
        )
    except NotFoundError:
        await expire_if_due(manager, name)
        raise
