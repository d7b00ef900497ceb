"""The ``find_contexts`` tool: search the caller's readable contexts (service/search.py)."""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from groundhog_mcp.models import format_timestamp
from groundhog_mcp.server.app_context import AppContext
from groundhog_mcp.server.arguments import Timestamp
from groundhog_mcp.server.outputs import OutputModel
from groundhog_mcp.server.tools import _READ_ONLY, AppCtx, _manager, tool_errors  # pyright: ignore[reportPrivateUsage]
from groundhog_mcp.service.reading import MAX_FIELDS
from groundhog_mcp.service.search import MAX_CONDITIONS, FindPage

__all__ = ["FindOut", "FoundOut", "register_search_tool"]


class FoundOut(OutputModel):
    name: str
    revision: int
    updated_at: str
    fields: dict[str, Any] | None = Field(default=None, description="sparse copy of the state: the fields asked for")
    missing: list[str] | None = Field(default=None, description="fields this context does not have")


class FindOut(OutputModel):
    contexts: list[FoundOut]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last page")

    @classmethod
    def of(cls, page: FindPage) -> FindOut:
        return cls(
            contexts=[
                FoundOut(
                    name=f.name,
                    revision=f.revision,
                    updated_at=format_timestamp(f.updated_at),
                    fields=f.fields,
                    missing=f.missing or None,
                )
                for f in page.contexts
            ],
            next_cursor=page.next_cursor,
        )


@tool_errors
async def find_contexts(
    ctx: AppCtx,
    where: Annotated[list[dict[str, Any]], Field(max_length=MAX_CONDITIONS)] = [],  # noqa: B006
    text: str | None = None,
    prefix: str = "",
    updated_after: Timestamp | None = None,
    updated_before: Timestamp | None = None,
    sort: str = "name",
    order: Literal["asc", "desc"] = "asc",
    fields: Annotated[list[str] | None, Field(max_length=MAX_FIELDS)] = None,
    cursor: str | None = None,
    limit: Annotated[int, Field(ge=1, le=100)] = 20,
) -> FindOut:
    """Find your contexts. where: [{path, op, value}], all hold; path: JSON Pointer into the state
    (/data/..., /metadata/...) or /context_metadata/...; op: eq ne lt le gt ge in contains (array
    item or substring) exists (value true/false). text: words in the data's strings. sort: name,
    updated_at or a path. fields: paths to return. Pages: next_cursor."""
    page = await _manager(ctx).find(
        prefix=prefix,
        where=where,
        text=text,
        updated_after=updated_after,
        updated_before=updated_before,
        sort=sort,
        order=order,
        fields=fields,
        cursor=cursor,
        limit=limit,
    )
    return FindOut.of(page)


def register_search_tool(server: MCPServer[AppContext]) -> None:
    """Add ``find_contexts`` to ``server`` (called by :func:`groundhog_mcp.server.build.build_server`)."""
    server.add_tool(
        find_contexts,
        title="Find contexts",
        description=inspect.cleandoc(find_contexts.__doc__ or ""),
        annotations=_READ_ONLY,
        structured_output=True,
    )
