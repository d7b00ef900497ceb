"""Who a service call acts for: one explicit value handed down, never read from the context."""

from __future__ import annotations

from dataclasses import dataclass, field

from groundhog_mcp.models import Principal

__all__ = ["Caller"]


@dataclass(frozen=True)
class Caller:
    """The principal a request acts as, the request's id (every audit row written while serving
    it carries it), its operation (the MCP tool's name: a denial's audit row names it; without
    one, the right that was missing), and the lease token its writes present. The server layer
    builds one per request."""

    principal: Principal = field(default_factory=Principal)
    request_id: str | None = None
    operation: str | None = None
    lease_token: int | None = None
    """The fencing token the caller's writes present (``lease``; groundhog_mcp/service/leases.py)."""
