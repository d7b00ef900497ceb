"""The ``merge_states`` tool: merge contexts at revisions and inline states, optionally into a target."""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from groundhog_mcp.errors import MergeConflict, StateValidationError, ValidationIssue
from groundhog_mcp.models import format_timestamp
from groundhog_mcp.server.app_context import AppContext
from groundhog_mcp.server.outputs import OutputModel, StateValue
from groundhog_mcp.server.tools import (
    AppCtx,
    ExpectedRevision,
    LeaseToken,
    Name,
    StateInput,
    _manager,  # pyright: ignore[reportPrivateUsage]
    tool_errors,
)
from groundhog_mcp.service.merge import MAX_MERGE_INPUTS, MAX_REDUCERS, MergeOutcome, Provenance, SourceInfo

__all__ = ["MAX_LISTED", "ConflictOut", "MergeInput", "MergeOut", "ProvenanceOut", "SourceOut", "register_merge_tool"]

# Conflicts and provenance of a large merge can run to thousands: the tool lists the first ones.
MAX_LISTED = 100

StrategyArg = Literal["ordered", "three_way", "reducers"]
ReducerArg = Literal["append", "union", "sum", "max", "min", "last"]
OnConflictArg = Literal["fail", "ours", "theirs"]


class MergeInput(BaseModel):
    """One state to merge: a context at a revision, or an inline state."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    context: Name | None = Field(default=None)
    revision: int | None = Field(default=None, ge=1, description="with context; current when omitted")
    state: StateInput | None = Field(default=None, description="instead of context: an inline state")

    def as_source(self, field: str) -> dict[str, Any]:
        if (self.context is None) == (self.state is None):
            raise StateValidationError(
                [ValidationIssue("", "give exactly one of context (a context at a revision) or state (inline)")],
                field=field,
            )
        if self.state is not None:
            if self.revision is not None:
                raise StateValidationError(
                    [ValidationIssue("", "revision goes with context, not with an inline state")], field=field
                )
            return {"state": self.state.model_dump()}
        return {"context": self.context, "revision": self.revision}


class SourceOut(OutputModel):
    context: str | None = Field(description="the context read; null for an inline state")
    revision: int | None = Field(description="the revision read; null for an inline state")

    @classmethod
    def of(cls, info: SourceInfo) -> SourceOut:
        return cls(context=info.context, revision=info.revision)


class ConflictOut(OutputModel):
    path: str = Field(description="JSON Pointer into the state document (/data/..., /metadata/...)")
    kind: str = Field(description="both_modified | modify_delete | add_add | type_mismatch")
    base: Any = Field(description="value in the base (null when absent there)")
    ours: Any = Field(description="value on our side: the earlier input, or the merge of the earlier inputs")
    theirs: Any = Field(description="value on their side: the later input")
    absent: list[str] = Field(description="sides where the path does not exist (base, ours, theirs)")

    @classmethod
    def of(cls, conflict: MergeConflict) -> ConflictOut:
        return cls(
            path=conflict.path,
            kind=conflict.kind,
            base=conflict.base,
            ours=conflict.ours,
            theirs=conflict.theirs,
            absent=list(conflict.absent),
        )


class ProvenanceOut(OutputModel):
    path: str = Field(description="a top-level path (/data/key or /metadata/key) more than one input set")
    inputs: list[int] = Field(description="indexes (from 0) of the inputs that set or changed it")
    winner: int | None = Field(description="the input whose value the result holds; null when combined from several")

    @classmethod
    def of(cls, provenance: Provenance) -> ProvenanceOut:
        return cls(path=provenance.path, inputs=list(provenance.inputs), winner=provenance.winner)


class MergeOut(OutputModel):
    strategy: str
    state: StateValue | None = Field(
        description="the merged state; null only when a dry run found conflicts and on_conflict is 'fail'"
    )
    conflicts: list[ConflictOut] = Field(description=f"conflicts found (first {MAX_LISTED}), resolved by on_conflict")
    conflict_count: int
    provenance: list[ProvenanceOut] = Field(description=f"who won each contested top-level path (first {MAX_LISTED})")
    provenance_count: int
    inputs: list[SourceOut] = Field(description="what each input resolved to, in order")
    base: SourceOut | None = Field(description="the base of a three_way merge")
    dry_run: bool
    written: bool = Field(description="true when the result was written to target as a new revision")
    target: str | None = None
    revision: int | None = Field(default=None, description="the target's new revision; use as expected_revision next")
    previous_revision: int | None = None
    sequence: int | None = Field(default=None, description="store-wide change sequence of the write")
    timestamp: str | None = None
    changed_paths: list[str] = Field(default_factory=list, description="JSON Pointers the write changed (first 20)")

    @classmethod
    def of(cls, outcome: MergeOutcome, target: str | None) -> MergeOut:
        out = cls(
            strategy=outcome.strategy,
            state=StateValue.of(outcome.state) if outcome.state is not None else None,
            conflicts=[ConflictOut.of(c) for c in outcome.conflicts[:MAX_LISTED]],
            conflict_count=len(outcome.conflicts),
            provenance=[ProvenanceOut.of(p) for p in outcome.provenance[:MAX_LISTED]],
            provenance_count=len(outcome.provenance),
            inputs=[SourceOut.of(i) for i in outcome.inputs],
            base=SourceOut.of(outcome.base) if outcome.base is not None else None,
            dry_run=outcome.dry_run,
            written=outcome.write is not None,
            target=target,
        )
        if outcome.write is not None:
            change = outcome.write.change
            out.revision = outcome.write.context.revision
            out.previous_revision = outcome.write.previous_revision
            out.sequence = change.sequence
            out.timestamp = format_timestamp(change.timestamp)
            out.changed_paths = [str(op.get("path", "")) for op in (change.patch or [])][:20]
        return out


@tool_errors
async def merge_states(
    ctx: AppCtx,
    inputs: Annotated[
        list[MergeInput],
        Field(
            description="States in order: {context, revision?} or {state: {data, metadata?, version?}}",
            min_length=2,
            max_length=MAX_MERGE_INPUTS,
        ),
    ],
    strategy: Annotated[
        StrategyArg,
        Field(description="ordered: RFC 7396 fold, later wins; three_way: each input's changes since base; reducers"),
    ] = "ordered",
    base: Annotated[
        MergeInput | None,
        Field(
            description=(
                "three_way: the state the inputs started from, e.g. {context, revision}; default: the fork "
                "point or last merge between the inputs"
            )
        ),
    ] = None,
    reducers: Annotated[
        dict[str, ReducerArg] | None,
        Field(
            description='Pointer (/data/... or /metadata/...) -> reducer, e.g. {"/data/log": "append"}',
            max_length=MAX_REDUCERS,
        ),
    ] = None,
    on_conflict: Annotated[
        OnConflictArg,
        Field(description="fail (an error listing conflicts), ours (earlier input) or theirs (later)"),
    ] = "fail",
    target: Annotated[Name | None, Field(description="Write the result to this context as a new revision")] = None,
    expected_revision: ExpectedRevision = None,
    dry_run: Annotated[bool, Field(description="Check and list conflicts; write nothing")] = False,
    lease_token: LeaseToken = None,
) -> MergeOut:
    """Merge 2-16 states (contexts at revisions, inline states), data and metadata. three_way:
    a key changed differently on both sides is a conflict on_conflict settles. reducers at given
    paths (any strategy) combine values. With target (and expected_revision) the result is
    written as one new revision; dry_run previews it."""
    sources = [item.as_source(f"inputs[{i}]") for i, item in enumerate(inputs)]
    outcome = (
        await _manager(ctx)
        .with_lease(lease_token)
        .merge(
            sources,
            strategy=strategy,
            base=base.as_source("base") if base is not None else None,
            reducers=reducers,
            on_conflict=on_conflict,
            target=target,
            expected_revision=expected_revision,
            dry_run=dry_run,
        )
    )
    return MergeOut.of(outcome, target)


_MERGE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)


def register_merge_tool(server: MCPServer[AppContext]) -> None:
    """Add ``merge_states`` to ``server`` (called by :func:`groundhog_mcp.server.build.build_server`)."""
    server.add_tool(
        merge_states,
        title="Merge states",
        description=inspect.cleandoc(merge_states.__doc__ or ""),
        annotations=_MERGE,
        structured_output=True,
    )
