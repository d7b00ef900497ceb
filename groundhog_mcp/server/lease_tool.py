"""The ``lease`` tool: agents take turns on a context (take, renew, release a fencing token)."""

from __future__ import annotations

import inspect
from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations
from pydantic import Field

from groundhog_mcp.server.app_context import AppContext
from groundhog_mcp.server.outputs import LeaseOut
from groundhog_mcp.server.tools import AppCtx, Name, _manager, tool_errors  # pyright: ignore[reportPrivateUsage]

__all__ = ["register_lease_tool"]


@tool_errors
async def lease(
    name: Name,
    action: Literal["take", "renew", "release"],
    ctx: AppCtx,
    token: Annotated[int | None, Field(description="renew, release: from take")] = None,
    # Bounds are checked by the service, whose error names the limit (max_lease_seconds is a setting).
    ttl_seconds: Annotated[float | None, Field(description="seconds until expiry")] = None,
    wait_seconds: Annotated[float, Field(description="take: wait in line, up to 60 s")] = 0,
    holder: Annotated[str | None, Field(description="take: your label", max_length=64)] = None,
) -> LeaseOut:
    """Take turns with other agents: take returns a fencing token, pass it as lease_token on
    writes. While held, writes without it fail (code leased). Renew before expires_at; release."""
    manager = _manager(ctx)
    if action == "take":
        grant = await manager.take_lease(name, ttl_seconds=ttl_seconds, wait_seconds=wait_seconds, holder=holder)
    elif action == "renew":
        grant = await manager.renew_lease(name, token, ttl_seconds=ttl_seconds)
    else:
        grant = await manager.release_lease(name, token)
    return LeaseOut.of(
        name, grant.lease, held=grant.held, sequence=grant.change.sequence if grant.change is not None else None
    )


def register_lease_tool(server: MCPServer[AppContext]) -> None:
    server.add_tool(
        lease,
        title="Lease",
        description=inspect.cleandoc(lease.__doc__ or ""),
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        ),
        structured_output=True,
    )
