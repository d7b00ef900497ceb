"""The ``audit_log`` tool: the audit rows of the caller's namespace, for admins."""

from __future__ import annotations

import inspect
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations
from pydantic import Field

from groundhog_mcp.models import NAME_PATTERN
from groundhog_mcp.server.app_context import AppContext
from groundhog_mcp.server.arguments import Timestamp
from groundhog_mcp.server.outputs import AuditEntryOut, AuditLogOut
from groundhog_mcp.server.tools import AppCtx, _manager, tool_errors  # pyright: ignore[reportPrivateUsage]

__all__ = ["register_audit_tool"]


@tool_errors
async def audit_log(
    ctx: AppCtx,
    context: Annotated[str | None, Field(description="Only this context's rows", pattern=NAME_PATTERN)] = None,
    prefix: Annotated[str, Field(description="Only names starting with this", max_length=128)] = "",
    principal: Annotated[str | None, Field(description="Only this principal's rows", max_length=128)] = None,
    operation: Annotated[
        str | None,
        Field(
            description="Only this operation: register, update, rollback, merge, event, migrate, unregister, "
            "dead_letter, import, or a refused tool's name",
            max_length=64,
        ),
    ] = None,
    since: Annotated[Timestamp | None, Field(description="Only rows at or after this RFC 3339 time")] = None,
    until: Annotated[Timestamp | None, Field(description="Only rows before this RFC 3339 time")] = None,
    newest_first: Annotated[bool, Field(description="false: oldest first")] = True,
    cursor: Annotated[str | None, Field(description="next_cursor of the previous page", max_length=32)] = None,
    limit: Annotated[int, Field(description="Page size", ge=1, le=100)] = 50,
) -> AuditLogOut:
    """Admins: your namespace's audit log, a page at a time: every committed write (who, context,
    revision, when, request) and denied requests (per principal the first each minute, then a
    count). It never holds state contents."""
    manager = _manager(ctx)
    page = await manager.audit_log(
        context=context,
        prefix=prefix,
        principal=principal,
        operation=operation,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
        newest_first=newest_first,
    )
    return AuditLogOut(
        namespace=manager.principal.namespace,
        entries=[AuditEntryOut.of(r) for r in page.records],
        next_cursor=page.next_cursor,
    )


def register_audit_tool(server: MCPServer[AppContext]) -> None:
    server.add_tool(
        audit_log,
        title="Audit log",
        description=inspect.cleandoc(audit_log.__doc__ or ""),
        annotations=ToolAnnotations(
            read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
        structured_output=True,
    )
