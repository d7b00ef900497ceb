"""Merging named revisions and inline states, and writing the result to a target context.

:meth:`groundhog_mcp.service.state.StateManager.merge` is :func:`merge`, acting as its caller;
the merge itself (strategies, reducers, conflicts) is :mod:`groundhog_mcp.service.merge`'s.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from groundhog_mcp.errors import ConflictError, NotFoundError, StateValidationError, StoreBusyError, ValidationIssue
from groundhog_mcp.models import ContextState
from groundhog_mcp.service import updates
from groundhog_mcp.service.branches import TargetMoved, merge_base, merge_parents
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
from groundhog_mcp.service.reads import check_written, inline_if_small, state_issues
from groundhog_mcp.service.validation import check_name, inspect_state, raise_if_invalid
from groundhog_mcp.service.writes import WriteResult, mutation
from groundhog_mcp.store.base import Mutation, StoredContext

if TYPE_CHECKING:
    from groundhog_mcp.service.state import StateManager

__all__ = ["MERGE_ATTEMPTS", "merge"]

MERGE_ATTEMPTS = 5
"""Times a three-way merge into one of its inputs finds its base again when the target moves."""


async def merge(
    manager: StateManager,
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

    ``three_way`` without ``base``: the base is found from the inputs' lineage, the fork point or
    the last merge between them (when every input is a revision of one context: the lowest
    revision given, their common ancestor in the context's linear history). With
    ``target`` the result is validated against the target's schema and limits and written
    through the usual compare-and-set (``expected_revision``; ``0`` creates the target); an
    input naming the target's current state is re-read inside the write transaction, so a
    write that lands meanwhile is merged in, never overwritten. ``dry_run`` runs every check
    but writes nothing, and lists conflicts instead of raising them.
    """
    for attempt in range(1, MERGE_ATTEMPTS + 1):
        try:
            return await _merge_once(
                manager,
                inputs,
                strategy=strategy,
                base=base,
                reducers=reducers,
                on_conflict=on_conflict,
                target=target,
                expected_revision=expected_revision,
                dry_run=dry_run,
                last_attempt=attempt == MERGE_ATTEMPTS,
            )
        except TargetMoved:
            continue  # the merge base may have moved with the target: find it again
    raise AssertionError("the last attempt raises StoreBusyError, never TargetMoved")


async def _merge_once(
    manager: StateManager,
    inputs: Sequence[MergeSource | Mapping[str, Any]],
    *,
    strategy: Strategy,
    base: MergeSource | Mapping[str, Any] | None,
    reducers: Mapping[str, str] | None,
    on_conflict: OnConflict,
    target: str | None,
    expected_revision: int | None,
    dry_run: bool,
    last_attempt: bool,
) -> MergeOutcome:
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
        await manager.authorize("write", target)
    elif expected_revision is not None:
        raise StateValidationError(
            [ValidationIssue("", "only used with target (the context the merged state is written to)")],
            field="expected_revision",
        )
    contexts: dict[str, StoredContext] = {}

    async def resolve(source: MergeSource, field: str) -> tuple[ContextState, SourceInfo]:
        if isinstance(source, ContextState):
            raise_if_invalid(await asyncio.to_thread(inspect_state, source, manager.limits, None), field)
            return source, SourceInfo()
        context = contexts.get(source.context)
        if context is None:
            try:
                context = await manager.get(source.context)  # reads as this principal, like get_state
            except NotFoundError:
                raise NotFoundError(f"{field}.context: no context named {source.context!r}") from None
            contexts[source.context] = context
        revision = source.revision or context.revision
        state = await manager.reader.revision_state(context, revision, field=f"{field}.revision")
        # Inputs are merged in their context's current state format (the result's version is theirs).
        return await manager.reader.upcast_off_loop(context, state, revision), SourceInfo(source.context, revision)

    resolved = [await resolve(s, f"inputs[{i}]") for i, s in enumerate(sources)]
    states = [state for state, _ in resolved]
    infos = [info for _, info in resolved]
    refs = [s for s in sources if isinstance(s, ContextRef)]
    base_state: ContextState | None = None
    base_info: SourceInfo | None = None
    if base_source is not None:
        base_state, base_info = await resolve(base_source, "base")
    elif strategy == "three_way" and len(refs) == len(sources):
        # The fork point or the last merge between them (one context: the lowest revision given).
        found = await merge_base(manager, contexts, infos)
        if found is not None:
            base_state, base_info = found
    lineage_base = base_source is None and base_info is not None

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
            raise_if_invalid(inspect_state(result.state, manager.limits, None), "merged")
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
            current: StoredContext | None = await manager.get(target)
        except NotFoundError:
            current = None
        if current is None and expected_revision != 0:
            raise NotFoundError(missing)
        if current is not None and expected_revision is not None and expected_revision != current.revision:
            raise ConflictError(target, expected_revision, current.revision)
        issues = await asyncio.to_thread(
            state_issues,
            result.state,
            current.schema if current is not None else None,
            current.settings if current is not None else {},
            manager.limits,
        )
        raise_if_invalid(issues, "state")
        return outcome(result)
    if expected_revision == 0:
        try:
            created = await updates.register(
                manager,
                target,
                state=result.state,
                if_exists="error",
                merged_from=merge_parents(contexts, infos, target),  # lineage, as a merge into an existing target
            )
        except ConflictError as exc:
            raise ConflictError(target, 0, exc.current_revision) from None
        assert isinstance(created, WriteResult)  # if_exists="error" never returns an existing context
        return outcome(result, created)

    live = [i for i, s in enumerate(sources) if s == ContextRef(target)]
    latest = [result]

    def apply(current: StoredContext) -> Mutation:
        if live and current.revision != infos[live[0]].revision and lineage_base:
            # Its base was found for the revision first read: find it again (within bounds).
            if last_attempt:
                raise StoreBusyError(
                    f"target: context {target!r} kept changing while the merge base was found "
                    f"({MERGE_ATTEMPTS} attempts); retry"
                )
            raise TargetMoved
        if live and current.revision != infos[live[0]].revision:
            # The target moved since it was read: merge its state as of this transaction.
            latest[0] = run(
                [manager.reader.upcast(current, current.state) if i in live else s for i, s in enumerate(states)]
            )
            for i in live:  # and report the revision that was merged, not the one first read
                infos[i] = SourceInfo(target, current.revision)
        state = latest[0].state
        text = check_written(state, current, manager.limits)
        return dataclasses.replace(
            mutation(current, state, op="merge", text=text), parents=merge_parents(contexts, infos, target)
        )

    try:
        write = await manager.writer.mutate(
            manager.caller,
            target,
            expected_revision,
            apply,
            detail=f"strategy {strategy}",
            # Inside the transaction when the inputs and the result are small (a target that
            # moved is merged again there, from those inputs).
            inline=inline_if_small(
                *(part for s in (*states, base_state, result.state) if s is not None for part in (s.data, s.metadata))
            ),
        )
    except NotFoundError:
        raise NotFoundError(missing) from None
    return outcome(latest[0], write)
