"""Lineage: where a context came from (forks) and what it took in (merges), and the merge base.

Each context's history is linear; lineage rows add the edges between contexts: a fork's first
revision descends from the source revision it copied, and a revision written by a merge descends
from every other context revision the merge took as input. A context revision's ancestors are
then, per context, every revision up to some highest one, so a set of ancestors is a map
``context id -> highest revision`` and the common ancestors of several heads are the
per-context minimum of their maps. The merge base is the common ancestor that is not an
ancestor of another one (like ``git merge-base``); should there be several (criss-cross merges),
the caller takes the most recently committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from groundhog_mcp.errors import LimitExceededError
from groundhog_mcp.models import ContextId, Parent
from groundhog_mcp.store.base import LineageEdge, Store

__all__ = ["MAX_LINEAGE_ROWS", "Point", "forked_from", "merge_base_candidates"]

MAX_LINEAGE_ROWS = 10_000
"""Lineage rows one merge-base search may read: beyond, pass ``base`` explicitly."""


@dataclass(frozen=True)
class Point:
    """A revision of a context, with the context's name (as recorded)."""

    id: ContextId
    name: str
    revision: int


def forked_from(edges: Sequence[LineageEdge]) -> Parent | None:
    """The fork point among a context's lineage rows, if it is a fork."""
    return next((e.ref.parent for e in edges if e.ref.parent.kind == "fork"), None)


class _Graph:
    """The lineage rows of a namespace, read a generation at a time as the search reaches them."""

    def __init__(self, store: Store, namespace: str) -> None:
        self._store = store
        self._namespace = namespace
        self._edges: dict[ContextId, list[LineageEdge]] = {}
        self._read = 0
        self.names: dict[ContextId, str] = {}

    async def _load(self, ids: list[ContextId]) -> None:
        missing = [i for i in ids if i not in self._edges]
        if not missing:
            return
        budget = MAX_LINEAGE_ROWS - self._read
        rows = await self._store.lineage(self._namespace, missing, limit=budget + 1)
        self._read += len(rows)
        if self._read > MAX_LINEAGE_ROWS:
            raise LimitExceededError(
                f"base: finding the merge base would read more than {MAX_LINEAGE_ROWS} fork and merge records; "
                "pass base explicitly (the context and revision both sides started from)"
            )
        for i in missing:
            self._edges[i] = []
        for row in rows:
            self._edges[row.context_id].append(row)
            self.names.setdefault(row.ref.id, row.ref.parent.name)

    async def ancestors(self, head: Point) -> dict[ContextId, int]:
        """Every ancestor of ``head`` (itself included): context id -> highest revision."""
        self.names.setdefault(head.id, head.name)
        reach = {head.id: head.revision}
        changed = True
        while changed:
            await self._load(list(reach))
            changed = False
            for context_id, highest in list(reach.items()):
                for edge in self._edges[context_id]:
                    parent = edge.ref
                    if edge.revision <= highest and reach.get(parent.id, 0) < parent.parent.revision:
                        reach[parent.id] = parent.parent.revision
                        changed = True
        return reach


async def merge_base_candidates(store: Store, namespace: str, heads: Sequence[Point]) -> list[Point]:
    """The best common ancestors of ``heads`` (usually one; none when they share no lineage)."""
    graph = _Graph(store, namespace)
    common: dict[ContextId, int] | None = None
    for head in heads:
        reach = await graph.ancestors(head)
        common = (
            reach
            if common is None
            else {c: min(r, reach[c]) for c, r in common.items() if c in reach and min(r, reach[c]) > 0}
        )
    candidates = [Point(c, graph.names.get(c, ""), r) for c, r in (common or {}).items()]
    best: list[Point] = []
    for candidate in candidates:
        descendants = [o for o in candidates if o != candidate]
        covered = False
        for other in descendants:
            if (await graph.ancestors(other)).get(candidate.id, 0) >= candidate.revision:
                covered = True
                break
        if not covered:
            best.append(candidate)
    return best
