"""The ``update_context`` tool: change a registered context's definition (admins)."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations
from pydantic import Field

from groundhog_mcp.server.app_context import AppContext
from groundhog_mcp.server.outputs import ContextOut
from groundhog_mcp.server.tools import (
    AppCtx,
    JSONObjectArg,
    Name,
    _manager,  # pyright: ignore[reportPrivateUsage]
    tool_errors,
)

__all__ = ["register_definition_tool"]


@tool_errors
async def update_context(
    name: Name,
    ctx: AppCtx,
    expected_revision: Annotated[int | None, Field(ge=0)] = None,
    # As in register_context (the tool's description says so); the service checks each.
    json_schema: JSONObjectArg | None = None,
    settings: JSONObjectArg | None = None,
    event_handlers: dict[str, dict[str, Any]] | None = None,
    metadata: JSONObjectArg | None = None,
    version: str | None = None,
    state_format: str | JSONObjectArg | None = None,
    validate_current: bool = True,
) -> ContextOut:
    """Replace parts of a context's definition (admin). A new revision (op redefine) keeps the
    state; a schema it breaks is refused unless validate_current is false."""
    manager = _manager(ctx)
    result = await manager.update_context(
        name,
        expected_revision=expected_revision,
        schema=json_schema,
        settings=settings,
        handlers=event_handlers,
        metadata=metadata,
        version=version,
        state_format=state_format,
        validate_current=validate_current,
    )
    return ContextOut.of(result.context, sequence=result.change.sequence)


def register_definition_tool(server: MCPServer[AppContext]) -> None:
    server.add_tool(
        update_context,
        title="Update context definition",
        description=inspect.cleandoc(update_context.__doc__ or ""),
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        ),
        structured_output=True,
    )
