"""The typed application context the lifespan hands to every tool and resource."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from groundhog_mcp.errors import AccessDeniedError
from groundhog_mcp.models import Principal
from groundhog_mcp.server.notify import Notifier
from groundhog_mcp.server.principals import request_principal
from groundhog_mcp.service import Caller, StateManager

__all__ = ["AppContext", "current_operation", "current_request_id"]

current_request_id: ContextVar[str | None] = ContextVar("groundhog_request_id", default=None)
"""The id of the request being served (the MCP JSON-RPC request id), set per tool call; the
manager :meth:`AppContext.request_manager` hands out acts for it, so every audit row written
while serving it carries it."""

current_operation: ContextVar[str | None] = ContextVar("groundhog_operation", default=None)
"""The operation being served (the MCP tool's name), set per tool call: a denial's audit row
names it (without one, the right that was missing)."""


@dataclass
class AppContext:
    """``manager`` acts as the configured principal; handlers use :meth:`request_manager`,
    which acts as the request's own (a bearer token's) when it has one."""

    manager: StateManager
    notifier: Notifier
    # True when every request must carry a token: a request without one is then refused
    # instead of running as the configured principal.
    authenticated: bool = False

    def manager_for(self, principal: Principal | None) -> StateManager:
        """The manager acting as ``principal`` (None: the configured one)."""
        if principal is None:
            if self.authenticated:
                raise AccessDeniedError("authorization: this request carries no authenticated principal")
            return self.manager
        if principal == self.manager.principal:
            return self.manager
        return self.manager.with_principal(principal)

    def request_manager(self, request: object | None = None) -> StateManager:
        """The manager for the current request (``request``: ``ctx.request_context.request``),
        acting for its principal, request id and operation (one :class:`Caller`)."""
        manager = self.manager_for(request_principal(request))
        request_id, operation = current_request_id.get(), current_operation.get()
        if request_id is None and operation is None:
            return manager
        return manager.with_caller(Caller(manager.principal, request_id, operation))
