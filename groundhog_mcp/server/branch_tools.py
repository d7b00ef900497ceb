"""The ``fork_context`` tool: a new context from another's state at a revision, with its lineage."""

from __future__ import annotations

import inspect
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations
from pydantic import Field

from groundhog_mcp.server.app_context import AppContext
from groundhog_mcp.server.outputs import ContextOut
from groundhog_mcp.server.tools import AppCtx, JSONObjectArg, Name, _manager, tool_errors  # pyright: ignore[reportPrivateUsage]

__all__ = ["register_branch_tools"]


@tool_errors
async def fork_context(
    name: Name,
    new_name: Name,
    ctx: AppCtx,
    revision: Annotated[int | None, Field(description="Current when omitted", ge=1)] = None,
    settings: Annotated[JSONObjectArg | None, Field(description="Override the source's")] = None,
) -> ContextOut:
    """Copy a context's state at a revision into a new context with its definition, to try an
    alternative apart; merge_states three_way (no base) merges it back."""
    manager = _manager(ctx)
    result = await manager.fork(name, new_name, revision=revision, settings=settings)
    parent = await manager.forked_from(result.context)
    return ContextOut.of(result.context, created=True, sequence=result.change.sequence, forked_from=parent)


_FORK = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)


def register_branch_tools(server: MCPServer[AppContext]) -> None:
    """Add ``fork_context`` to ``server`` (called by :func:`groundhog_mcp.server.build.build_server`)."""
    server.add_tool(
        fork_context,
        title="Fork context",
        description=inspect.cleandoc(fork_context.__doc__ or ""),
        annotations=_FORK,
        structured_output=True,
    )
