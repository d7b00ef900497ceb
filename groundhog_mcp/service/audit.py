"""What the service knows about the audit log: the request a write serves, and pages of rows.

The rows themselves are written by the stores, in each write's own transaction; their HMAC
chain is :mod:`groundhog_mcp.security.audit`'s.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime

from groundhog_mcp.errors import StateValidationError, ValidationIssue
from groundhog_mcp.models import format_timestamp, utcnow
from groundhog_mcp.security.audit import AuditHead, ChainProblem, ChainVerifier, Signer
from groundhog_mcp.store.base import AUDIT_DENIED, AuditEntry, AuditQuery, AuditRecord, Store

__all__ = [
    "DENIAL_SUMMARY_OPERATION",
    "DENIAL_WINDOW_SECONDS",
    "AuditPage",
    "AuditVerification",
    "DenialLog",
    "current_operation",
    "current_request_id",
    "decode_audit_cursor",
    "encode_audit_cursor",
    "verify_audit_chain",
]

current_request_id: ContextVar[str | None] = ContextVar("groundhog_request_id", default=None)
"""The id of the request being served (the MCP JSON-RPC request id), set by the server layer;
every audit row written while serving it carries it."""

current_operation: ContextVar[str | None] = ContextVar("groundhog_operation", default=None)
"""The operation being served (the MCP tool's name), set by the server layer: a denial's audit
row names it (without one, the right that was missing)."""

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
class AuditVerification:
    """What ``audit verify`` found: rows verified, the last one's HMAC, and the first problem."""

    rows: int
    last_hmac: str
    problem: ChainProblem | None


_VERIFY_PAGE = 1000


async def verify_audit_chain(store: Store, key: Signer, anchor: AuditHead | None = None) -> AuditVerification:
    """Check the whole HMAC chain, a page of rows at a time, up to the first broken row (and,
    for an altered row, the rows after it that tell a reordering apart)."""
    verifier = ChainVerifier(key, anchor)
    after, last_hmac, done = 0, "", False
    while not done and (page := await store.read_audit(AuditQuery(after=after, limit=_VERIFY_PAGE))):
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
        after = page[-1].sequence
    if verifier.problem is None:
        verifier.check_tail(await store.last_sequence())
        verifier.check_anchor()
    return AuditVerification(verifier.rows, last_hmac, verifier.problem)


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
