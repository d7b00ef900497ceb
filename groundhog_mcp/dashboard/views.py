"""What each page reads, through the state manager's public methods, as the request's principal.

Every read is bounded: a page of contexts or revisions, 200 children of one state node, 500
diff operations side by side, the last 500 changes of the feed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from groundhog_mcp.dashboard import pages
from groundhog_mcp.dashboard.markup import Html
from groundhog_mcp.errors import AccessDeniedError, ContextError
from groundhog_mcp.models import Change, HistoryEntry, JSONObject, dumps, json_type
from groundhog_mcp.security.audit import Signer
from groundhog_mcp.service import StateManager
from groundhog_mcp.service.audit import AuditVerification, encode_audit_cursor
from groundhog_mcp.service.expiry import context_expires_at
from groundhog_mcp.service.patching import resolve_pointer

__all__ = ["Views"]

PAGE = 50
MAX_CHILDREN = 200
MAX_DIFF_LINES = 500
RECENT_CHANGES = 500
WRITE_BUCKETS = 30
BUCKET_SECONDS = 10
_VERIFY_REUSE_SECONDS = 5.0


def _escape_key(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _children(value: Any, pointer: str, offset: int) -> tuple[list[pages.TreeChild], int]:
    """Up to ``MAX_CHILDREN`` children of ``value`` from ``offset``, and how many follow."""
    items: list[tuple[str, Any]]
    if isinstance(value, dict):
        items = list(value.items())[offset : offset + MAX_CHILDREN]  # pyright: ignore[reportUnknownArgumentType]
        total = len(value)  # pyright: ignore[reportUnknownArgumentType]
    elif isinstance(value, list):
        items = [(str(i), v) for i, v in enumerate(value[offset : offset + MAX_CHILDREN], start=offset)]  # pyright: ignore[reportUnknownArgumentType, reportUnknownVariableType]
        total = len(value)  # pyright: ignore[reportUnknownArgumentType]
    else:
        return [], 0
    children: list[pages.TreeChild] = []
    for key, child in items:
        kind = json_type(child)
        container = kind in ("object", "array")
        children.append(
            pages.TreeChild(
                key=key,
                pointer=f"{pointer}/{_escape_key(key)}",
                kind=kind,
                count=len(child) if container else 0,
                bytes=len(dumps(child).encode("utf-8")),
                preview=None if container else child,
            )
        )
    return children, max(0, total - offset - len(items))


def _diff_lines(before: JSONObject, patch: list[JSONObject]) -> list[pages.DiffLine]:
    lines: list[pages.DiffLine] = []
    for op in patch[:MAX_DIFF_LINES]:
        path = str(op.get("path", ""))
        try:
            old: Any = resolve_pointer(before, path)
        except ContextError:
            old = pages.ABSENT
        new: Any = op.get("value", pages.ABSENT)
        lines.append(pages.DiffLine(str(op.get("op", "")), path, old, new))
    return lines


class Views:
    """The pages' reads. One audit verification runs at a time; its result is reused for a few
    seconds (the whole chain is read to verify it)."""

    def __init__(self, audit_key: Signer | None) -> None:
        self._audit_key = audit_key
        self._verifying = asyncio.Lock()
        self._verified: tuple[float, str, AuditVerification] | None = None

    async def sequence(self, manager: StateManager) -> int:
        """The change feed's position now (live updates follow from there)."""
        _, cursor = await manager.wait_for_changes(timeout=0)
        return cursor

    async def contexts(self, manager: StateManager, chrome: pages.Chrome, prefix: str, cursor: str | None) -> Html:
        page = await manager.list(prefix=prefix, cursor=cursor, limit=PAGE)
        last = await manager.last_writes(page.contexts)  # one query for the page
        leases = await manager.leases_of(page.contexts)  # one query for the page
        expiries = {c.name: at for c in page.contexts if (at := context_expires_at(c)) is not None}
        return pages.contexts_page(
            chrome, page.contexts, last, leases, expiries, prefix=prefix, next_cursor=page.next_cursor
        )

    async def node(
        self, manager: StateManager, base: str, name: str, revision: int | None, path: str, offset: int
    ) -> Html:
        context, at, state = await manager.read(name, revision)
        value = resolve_pointer(state.data, path)
        children, more = await asyncio.to_thread(_children, value, path, offset)
        shown = None if at == context.revision and revision is None else at
        return pages.tree_fragment(base, name, shown, children, more, offset + len(children))

    async def context(
        self, manager: StateManager, chrome: pages.Chrome, name: str, revision: int | None, path: str
    ) -> Html:
        context, at, state, stored_format = await manager.read_upcast(name, revision)
        root = await self.node(manager, chrome.base, name, revision, path, 0)
        about = pages.ContextAbout(
            lease=await manager.lease_of(context),
            expires_at=context_expires_at(context),
            lineage=await manager.lineage(context),  # only the contexts this principal may read
        )
        return pages.context_page(chrome, context, at, state.version, stored_format, root, state.metadata, about)

    async def timeline(self, manager: StateManager, chrome: pages.Chrome, name: str, before: int | None) -> Html:
        context = await manager.get(name)
        entries = await manager.history(name, before=before, limit=PAGE)
        return pages.timeline_page(chrome, context, entries, before)

    async def diff(
        self, manager: StateManager, chrome: pages.Chrome, name: str, from_revision: int | None, to_revision: int | None
    ) -> Html:
        context = await manager.get(name)
        to = context.revision if to_revision is None else to_revision
        start = max(to - 1, 1) if from_revision is None else from_revision
        patch = await manager.diff(name, start, to)
        _, _, before = await manager.read(name, start)
        lines = await asyncio.to_thread(_diff_lines, before.document(), patch)
        return pages.diff_page(chrome, context, start, to, lines, patch, max(0, len(patch) - len(lines)))

    async def recent_changes(self, manager: StateManager, name: str | None = None) -> list[Change]:
        """The last changes this principal may see (of ``name`` only, if given), newest last."""
        head = await self.sequence(manager)
        changes = await manager.changes_after(max(0, head - RECENT_CHANGES), limit=RECENT_CHANGES)
        return [c for c in changes if name is None or c.name == name]

    async def events(self, manager: StateManager, chrome: pages.Chrome, name: str | None) -> Html:
        letters = await manager.list_dead_letters(name=name, limit=PAGE, include_replayed=True)
        changes = (await self.recent_changes(manager, name))[-PAGE:]
        return pages.events_page(chrome, name, letters, list(reversed(changes)))

    async def audit(self, manager: StateManager, chrome: pages.Chrome, cursor: str | None) -> Html:
        try:
            page = await manager.audit_log(cursor=cursor, limit=PAGE)
        except AccessDeniedError:
            return pages.error_page(
                chrome,
                f"The audit log needs the admin grant on every context of namespace {chrome.principal.namespace!r}.",
            )
        verified: tuple[int, Any] | str
        broken_cursor = None
        if self._audit_key is None:
            verified = "The audit log is turned off, or its key is not available here: it cannot be verified."
        else:
            verification = await self._verify(manager, self._audit_key)
            verified = (verification.rows, verification.problem)
            problem = verification.problem
            if problem is not None and problem.at_sequence is not None:
                broken_cursor = encode_audit_cursor(problem.at_sequence + 1)
        return pages.audit_page(
            chrome, page.records, verified=verified, next_cursor=page.next_cursor, broken_cursor=broken_cursor
        )

    async def _verify(self, manager: StateManager, key: Signer) -> AuditVerification:
        namespace = manager.principal.namespace
        async with self._verifying:
            if self._verified is not None:
                at, verified_for, result = self._verified
                if verified_for == namespace and time.monotonic() - at < _VERIFY_REUSE_SECONDS:
                    return result
            result = await manager.verify_audit(key)
            self._verified = (time.monotonic(), namespace, result)
            return result

    async def metrics(self, manager: StateManager, chrome: pages.Chrome, name: str | None) -> Html:
        server, per_context = await manager.collect_metrics(limit=100)
        changes = await self.recent_changes(manager)
        writes = _buckets([c.timestamp for c in changes], datetime.now(UTC))
        chosen = name or (max(per_context, key=lambda c: c.state_size).name if per_context else None)
        sizes: tuple[str, Sequence[HistoryEntry]] | None = None
        if chosen is not None:
            sizes = (chosen, await manager.history(chosen, limit=100))
        return pages.metrics_page(chrome, server, per_context, writes, BUCKET_SECONDS, sizes)


def _buckets(moments: Sequence[datetime], now: datetime) -> list[int]:
    """Counts per ``BUCKET_SECONDS`` over the last ``WRITE_BUCKETS`` buckets, oldest first."""
    counts = [0] * WRITE_BUCKETS
    for moment in moments:
        age = (now - moment).total_seconds()
        index = WRITE_BUCKETS - 1 - int(age // BUCKET_SECONDS)
        if 0 <= index < WRITE_BUCKETS:
            counts[index] += 1
    return counts
