"""What the service knows about the audit log: the request a write serves, and pages of rows.

The rows themselves are written by the stores, in each write's own transaction; their HMAC
chain is :mod:`groundhog_mcp.security.audit`'s.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from groundhog_mcp.errors import StateValidationError, ValidationIssue
from groundhog_mcp.store.base import AuditRecord

__all__ = ["AuditPage", "current_operation", "current_request_id", "decode_audit_cursor", "encode_audit_cursor"]

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
