"""What the service knows about the audit log: the request a write serves, denied requests,
and pages of rows.

The rows of writes are written by the stores, in each write's own transaction; their HMAC
chain is :mod:`groundhog_mcp.security.audit`'s. Denials are bounded here (:class:`DenialLog`)
and written by :class:`AuditTrail`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from groundhog_mcp.errors import AccessDeniedError, ContextError, StateValidationError, ValidationIssue
from groundhog_mcp.models import Principal, format_timestamp, utcnow
from groundhog_mcp.security.audit import AuditHead, ChainProblem, ChainVerifier, Signer
from groundhog_mcp.service.caller import Caller
from groundhog_mcp.service.validation import check_limit
from groundhog_mcp.store.base import (
    AUDIT_DENIED,
    AuditChainHead,
    AuditEntry,
    AuditNote,
    AuditQuery,
    AuditRecord,
    Store,
)

if TYPE_CHECKING:
    from groundhog_mcp.service.metrics import MetricsRecorder

__all__ = [
    "DENIAL_SUMMARY_OPERATION",
    "DENIAL_WINDOW_SECONDS",
    "AuditPage",
    "AuditTrail",
    "AuditVerification",
    "ChainVerification",
    "DenialLog",
    "decode_audit_cursor",
    "encode_audit_cursor",
    "verify_audit_chain",
]

_log = structlog.get_logger("groundhog_mcp.state")

# Recorded operations: the change ops (register, update, rollback, merge, event, migrate,
# unregister), dead_letter, import, and for denials the operation that was refused.


@dataclass(frozen=True)
class AuditPage:
    records: list[AuditRecord]
    next_cursor: str | None


def encode_audit_cursor(sequence: int) -> str:
    return f"a{sequence}"


def decode_audit_cursor(cursor: str) -> int:
    if len(cursor) > 21 or not cursor.startswith("a") or not cursor[1:].isdigit():
        raise StateValidationError(
            [ValidationIssue("", "not a cursor this server issued; pass next_cursor from a previous page")],
            field="cursor",
        )
    return int(cursor[1:])


@dataclass(frozen=True)
class ChainVerification:
    """What ``audit verify`` found in one chain: ``chain`` is its namespace (``""``: the
    store-wide chain; None: the legacy chain of rows written before schema 10), the rows
    verified, the last one's HMAC, and the first problem."""

    chain: str | None
    rows: int
    last_hmac: str
    problem: ChainProblem | None

    @property
    def head(self) -> AuditHead:
        """The last verified row, as ``audit head`` prints it."""
        return AuditHead(self.rows, self.last_hmac, self.chain)

    @property
    def label(self) -> str:
        if self.chain is None:
            return "the legacy chain"
        return f"chain {self.chain!r}" if self.chain else "the store-wide chain"


@dataclass(frozen=True)
class AuditVerification:
    """Every chain verified (the legacy one first, then by namespace)."""

    chains: list[ChainVerification]

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.chains)

    @property
    def problem(self) -> ChainProblem | None:
        """The first problem of the first broken chain."""
        return next((c.problem for c in self.chains if c.problem is not None), None)


_VERIFY_PAGE = 1000


async def verify_audit_chain(
    store: Store, key: Signer, anchors: Sequence[AuditHead] = (), *, namespace: str | None = None
) -> AuditVerification:
    """Check every HMAC chain (``namespace``: that namespace's chain only, which reads no other
    namespace's row), each up to its first broken row. Each chain must reach the head the store
    recorded for it and each of ``anchors`` (heads kept elsewhere) of that chain."""
    recorded = {h.namespace: h for h in await store.audit_heads(namespace)}
    wanted: dict[str | None, list[AuditHead]] = {chain: [] for chain in recorded}
    for anchor in anchors:
        if namespace is None or anchor.chain == namespace:
            wanted.setdefault(anchor.chain, []).append(anchor)
    order = sorted(wanted, key=lambda chain: (chain is not None, chain or ""))
    return AuditVerification(
        [await _verify_one(store, key, chain, recorded.get(chain), wanted[chain]) for chain in order]
    )


async def _verify_one(
    store: Store, key: Signer, chain: str | None, recorded: AuditChainHead | None, anchors: list[AuditHead]
) -> ChainVerification:
    verifier = ChainVerifier(key, number="position" if chain is not None else "sequence")
    for anchor in anchors:
        verifier.anchor_to(anchor, "the anchored head")
    if recorded is not None and recorded.position > 0:
        verifier.anchor_to(AuditHead(recorded.position, recorded.hmac, chain), "the head the store recorded")
    # Read before the rows: a write committed meanwhile has its audit row among them.
    last_change = (await store.namespace_summary(chain, ""))[1] if chain is not None else 0
    after, last_hmac, done = 0, "", False
    query = AuditQuery(namespace=chain, chain=True, limit=_VERIFY_PAGE)
    while not done and (page := await store.read_audit(dataclasses.replace(query, after=after))):
        for record in page:
            if verifier.problem is None:
                if verifier.feed(record.content(), record.hmac):
                    last_hmac = record.hmac
                    continue
                if not verifier.diagnosing:
                    done = True
                    break
                verifier.start_diagnosis(record.hmac)
            elif verifier.diagnose(record.content(), record.hmac):
                done = True
                break
        last = page[-1]
        after = last.position if chain is not None and last.position is not None else last.sequence
    if verifier.problem is None:
        verifier.check_tail(last_change)
        verifier.check_anchor()
    return ChainVerification(chain, verifier.rows, last_hmac, verifier.problem)


DENIAL_WINDOW_SECONDS = 60.0
DENIAL_SUMMARY_OPERATION = "denied_requests"
"""The operation of a row that only counts denials (its detail says how many, and of what)."""

_MAX_DETAIL = 500
_MAX_LISTED_OPERATIONS = 8


@dataclass
class _Window:
    last_row_at: float | None = None  # clock time of this principal's last denial row
    pending: Counter[str] = field(default_factory=Counter[str])  # counted, not itemized, by operation
    since: datetime | None = None  # when the first of them was counted


class DenialLog:
    """Bounds the audit rows of denied requests: at most one row per principal (namespace and
    name) per ``window`` seconds. The first denial of a window is itemized (operation, context,
    error); later ones are counted, and the count goes out in that principal's next row: the
    next itemized one (a note appended to its detail) or, once the window has passed, a summary
    row of operation :data:`DENIAL_SUMMARY_OPERATION` written by :meth:`due` (the state manager
    asks every few seconds, and for everything at a clean shutdown). Exact counts are in the
    metrics. Nothing here touches the store, and what it answers depends on the principal and
    the clock only (never on the context a request named)."""

    def __init__(self, window: float = DENIAL_WINDOW_SECONDS, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}

    def admit(self, entry: AuditEntry, *, itemize: bool = True) -> AuditEntry | None:
        """The row to write now for the denial ``entry`` (carrying the count of denials not
        itemized before it), or None when it is only counted. ``itemize=False`` always counts."""
        window = self._windows.setdefault((entry.namespace, entry.principal), _Window())
        now = self._clock()
        if itemize and (window.last_row_at is None or now - window.last_row_at >= self.window):
            window.last_row_at = now
            carried = _taken(window)
            if carried is not None:
                entry = dataclasses.replace(entry, detail=f"{entry.detail or 'denied'}; and {carried}"[:_MAX_DETAIL])
            return entry
        if window.since is None:
            window.since = utcnow()
        window.pending[entry.operation] += 1
        return None

    @property
    def pending(self) -> int:
        """Denials counted but not yet in any row."""
        return sum(w.pending.total() for w in self._windows.values())

    def due(self, *, everything: bool = False) -> list[AuditEntry]:
        """Summary rows for the counts whose principal's window has passed (``everything``: all
        counts, for a clean shutdown). The counts are handed over: write the rows."""
        now = self._clock()
        rows: list[AuditEntry] = []
        for (namespace, principal), window in list(self._windows.items()):
            passed = window.last_row_at is None or now - window.last_row_at >= self.window
            if window.pending and (everything or passed):
                window.last_row_at = now
                detail = _taken(window)
                rows.append(
                    AuditEntry(
                        principal=principal,
                        namespace=namespace,
                        operation=DENIAL_SUMMARY_OPERATION,
                        outcome=AUDIT_DENIED,
                        detail=detail,
                    )
                )
            elif not window.pending and passed:
                del self._windows[(namespace, principal)]  # idle: its next denial is itemized anyway
        return rows


def _taken(window: _Window) -> str | None:
    """``"N denied requests not itemized since T (operation n, …)"``, resetting the count; None if none."""
    count = window.pending.total()
    if not count:
        return None
    since = format_timestamp(window.since) if window.since is not None else "?"
    listed = ", ".join(f"{op} {n}" for op, n in window.pending.most_common(_MAX_LISTED_OPERATIONS))
    others = len(window.pending) - _MAX_LISTED_OPERATIONS
    window.pending = Counter()
    window.since = None
    more = f", {others} more operations" if others > 0 else ""
    plural = "s" if count != 1 else ""
    return f"{count} denied request{plural} not itemized since {since} ({listed}{more})"[:_MAX_DETAIL]


class AuditTrail:
    """What the state manager adds to the audit log: the note each write carries, and the rows
    of denied requests (bounded by :class:`DenialLog`, written off the request's cancellation,
    their counts summarised every ``interval`` seconds and at a clean shutdown)."""

    def __init__(self, store: Store, metrics: MetricsRecorder, pending: set[asyncio.Task[Any]]) -> None:
        self.store = store
        self.metrics = metrics
        self.pending = pending  # the manager's: close() waits for these writes too
        self.denials = DenialLog()
        self.interval = 5.0  # seconds between looks for counts whose minute has passed

    @staticmethod
    def note(caller: Caller, detail: str | None = None) -> AuditNote:
        """What a write adds to its audit row: the request it serves, and ``detail``."""
        return AuditNote(request_id=caller.request_id, detail=detail)

    async def denied(
        self,
        caller: Caller,
        operation: str,
        name: str | None,
        error: AccessDeniedError,
        *,
        principal: Principal | None = None,
        itemize: bool = True,
    ) -> None:
        """See :meth:`groundhog_mcp.service.state.StateManager.audit_denied`."""
        if error.audited:
            return
        error.audited = True
        who = principal or caller.principal
        self.metrics.count_denied(who.namespace, who.name, operation)
        entry = AuditEntry(
            principal=who.name,
            namespace=who.namespace,
            operation=operation,
            outcome=AUDIT_DENIED,
            context=name,
            request_id=caller.request_id,
            detail=str(error)[:500],
        )
        row = self.denials.admit(entry, itemize=itemize)
        if row is not None:
            await self._append([row])

    async def _append(self, rows: list[AuditEntry]) -> None:
        async def append_all() -> None:
            for row in rows:
                await self.store.append_audit(row)

        task = asyncio.ensure_future(append_all())
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        try:
            await asyncio.shield(task)
        except ContextError as exc:
            _log.error("audit: could not record denied requests", rows=len(rows), error=str(exc))

    async def write_summaries(self, *, everything: bool = False) -> None:
        rows = self.denials.due(everything=everything)
        if rows:
            await self._append(rows)

    async def summarise_forever(self) -> None:
        """Counts of denials whose minute has passed get their summary row within a few seconds."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.write_summaries()
            except Exception:  # a bug here must not end the flushing, nor the server
                _log.exception("audit: writing denial summaries failed")

    async def page(
        self,
        namespace: str,
        *,
        max_page: int,
        context: str | None,
        prefix: str,
        principal: str | None,
        operation: str | None,
        since: datetime | None,
        until: datetime | None,
        cursor: str | None,
        limit: int,
        newest_first: bool,
    ) -> AuditPage:
        """A page of ``namespace``'s rows (the caller's grant already checked)."""
        check_limit(limit, max_page)
        if since is not None and until is not None and until <= since:
            raise StateValidationError([ValidationIssue("", "must be later than since")], field="until")
        position = decode_audit_cursor(cursor) if cursor else None
        records = await self.store.read_audit(
            AuditQuery(
                namespace=namespace,
                context=context,
                prefix=prefix or None,
                principal=principal,
                operation=operation,
                since=since,
                until=until,
                after=None if newest_first else position,
                before=position if newest_first else None,
                newest_first=newest_first,
                limit=limit + 1,
            )
        )
        more = len(records) > limit
        records = records[:limit]
        return AuditPage(records, encode_audit_cursor(records[-1].sequence) if more else None)
