"""Access: the one grant check, and which contexts and changes a principal may see.

Grants depend on the context's name only, so every check here runs before any read of the
context: a denied request does the same store work whether the context exists or not.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from groundhog_mcp.errors import AccessDeniedError, NotFoundError, StateValidationError, ValidationIssue
from groundhog_mcp.models import Change, HistoryEntry, Parent, Principal, Right, check_name
from groundhog_mcp.service.audit import AuditTrail
from groundhog_mcp.service.caller import Caller
from groundhog_mcp.service.validation import check_limit
from groundhog_mcp.store.base import Store, StoredContext

__all__ = [
    "ContextPage",
    "authorize",
    "check_prefix",
    "list_page",
    "list_visible",
    "missing",
    "readable_history",
    "readable_parents",
    "sees",
    "visible_prefixes",
]


def missing(name: str) -> str:
    """What a missing context (and a context the caller may not read) answers."""
    return f"name: no context named {name!r}"


async def authorize(
    audit: AuditTrail, caller: Caller, right: Right, name: str, *, missing_text: str | None = None, itemize: bool = True
) -> None:
    """See :meth:`groundhog_mcp.service.state.StateManager.authorize`."""
    principal = caller.principal
    if principal.allows(right, name):
        return
    denied = AccessDeniedError(f"access: the {right} grant on {name!r} is missing for principal {principal.name!r}")
    # Every denial is recorded (the caller of a refused read sees only "not found").
    await audit.denied(caller, caller.operation or right, name or None, denied, itemize=itemize)
    if right == "read":
        raise NotFoundError(missing_text or missing(name))
    raise denied


def sees(principal: Principal, change: Change) -> bool:
    """Whether a change on the feed is one ``principal`` may hear about."""
    return change.namespace == principal.namespace and principal.allows("read", change.name)


def readable_parents(principal: Principal, parents: Sequence[Parent]) -> tuple[Parent, ...]:
    """The lineage (fork points, merge inputs) ``principal`` may be shown: only parents in
    contexts it may read. Lineage records a parent by name, and grants are per name prefix, so a
    parent outside the reader's grants is left out, never hinted at."""
    return tuple(p for p in parents if principal.allows("read", p.name))


def readable_history(principal: Principal, entries: Sequence[HistoryEntry]) -> list[HistoryEntry]:
    """``entries`` with their ``parents`` cut to what ``principal`` may read (see
    :func:`readable_parents`)."""
    shown: list[HistoryEntry] = []
    for entry in entries:
        parents = readable_parents(principal, entry.parents)
        shown.append(entry if parents == entry.parents else dataclasses.replace(entry, parents=parents))
    return shown


def visible_prefixes(principal: Principal, prefix: str) -> tuple[str, ...]:
    """Disjoint name prefixes covering the readable contexts whose names start with ``prefix``."""
    found: list[str] = []
    for granted in principal.prefixes("read"):
        if prefix.startswith(granted):
            return (prefix,)  # one grant covers the whole requested range
        if granted.startswith(prefix):
            found.append(granted)
    return tuple(found)


async def list_visible(
    store: Store, principal: Principal, prefix: str, after: str | None, limit: int
) -> list[StoredContext]:
    """Readable live contexts by name, names > ``after``: one store page per readable prefix,
    merged in the store's (bytewise) name order."""
    prefixes = visible_prefixes(principal, prefix)
    if len(prefixes) == 1:
        return await store.list(principal.namespace, prefix=prefixes[0], after=after, limit=limit)
    rows: list[StoredContext] = []
    for visible in prefixes:
        rows += await store.list(principal.namespace, prefix=visible, after=after, limit=limit)
    return sorted(rows, key=lambda c: c.name.encode())[:limit]


def check_prefix(prefix: str) -> None:
    if len(prefix) > 128 or any(not (c.isascii() and (c.isalnum() or c in "._-")) for c in prefix):
        raise StateValidationError(
            [
                ValidationIssue(
                    "", f"must be the start of a context name (A-Z a-z 0-9 . _ -, ≤ 128); got {prefix[:80]!r}"
                )
            ],
            field="prefix",
        )


@dataclass(frozen=True)
class ContextPage:
    contexts: list[StoredContext]
    next_cursor: str | None


def _encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        name = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        check_name(name)
    except (binascii.Error, UnicodeDecodeError, ValueError, StateValidationError):
        raise StateValidationError(
            [ValidationIssue("", "not a cursor this server issued; pass next_cursor from a previous page")],
            field="cursor",
        ) from None
    return name


async def list_page(
    store: Store, principal: Principal, max_page: int, prefix: str, cursor: str | None, limit: int
) -> ContextPage:
    """A page of the live contexts ``principal`` may read whose names start with ``prefix``."""
    if prefix:
        check_prefix(prefix)
    check_limit(limit, max_page)
    after = _decode_cursor(cursor) if cursor else None
    rows = await list_visible(store, principal, prefix, after, limit + 1)
    next_cursor = _encode_cursor(rows[limit - 1].name) if len(rows) > limit else None
    return ContextPage(rows[:limit], next_cursor)
