"""MCP resources: contexts, their state, history and past revisions as JSON documents."""

from __future__ import annotations

from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.resources.templates import ResourceSecurity
from mcp_types import INVALID_PARAMS, ListResourcesResult, PaginatedRequestParams, Resource

from groundhog_mcp import schemas
from groundhog_mcp.errors import ContextError, NotFoundError
from groundhog_mcp.models import ContextState, dumps
from groundhog_mcp.server.app_context import AppContext
from groundhog_mcp.server.error_results import invalid_params, protocol_error, protocol_errors
from groundhog_mcp.server.notify import state_uri
from groundhog_mcp.server.outputs import ContextOut, RevisionOut, StateValue, TooLargeOut, summary_of
from groundhog_mcp.service import StateManager
from groundhog_mcp.service.patching import resolve_pointer
from groundhog_mcp.service.reading import TooLarge, bounded

__all__ = ["register_resources"]

AppCtx = Context[AppContext, Any]
JSON = "application/json"
_HISTORY_IN_RESOURCE = 20


def _manager(ctx: AppCtx) -> StateManager:
    """The state manager acting as this request's principal (a bearer token's, over HTTP)."""
    return ctx.request_context.lifespan_context.request_manager(ctx.request_context.request)


@protocol_errors
async def contexts_resource(ctx: AppCtx, cursor: str | None = None) -> str:
    manager = _manager(ctx)
    page = await manager.list(cursor=cursor, limit=manager.limits.max_page)
    return dumps(
        {
            "contexts": [summary_of(c).model_dump() for c in page.contexts],
            "next_cursor": page.next_cursor,
            "next": f"groundhog://contexts?cursor={page.next_cursor}" if page.next_cursor else None,
        }
    )


@protocol_errors
async def context_resource(name: str, ctx: AppCtx) -> str:
    manager = _manager(ctx)
    context = await manager.get(name)
    return ContextOut.of(
        context, forked_from=await manager.forked_from(context), lease=await manager.lease_of(context)
    ).model_dump_json()


def _state_document(name: str, revision: int, state: ContextState, limit: int) -> str:
    if bounded(state.to_json(), "", limit) is None:
        return dumps({"name": name, "revision": revision, "state": StateValue.of(state).model_dump()})
    outline = bounded(state.data, "", 0)
    assert outline is not None  # a limit of 0 always outlines
    too_large = TooLarge(len(dumps(state.to_json()).encode("utf-8")), limit, outline.parts, outline.more_parts)
    hint = f"call get_state(name={name!r}, revision={revision}, path=<a part's path>)"
    return dumps({"name": name, "revision": revision, "too_large": TooLargeOut.of(too_large, hint).model_dump()})


@protocol_errors
async def state_resource(name: str, ctx: AppCtx, path: str | None = None) -> str:
    manager = _manager(ctx)
    _, revision, state = await manager.read(name)
    if path is None:
        return _state_document(name, revision, state, manager.limits.max_read_bytes)
    # The pointer is into the state document (/data/..., /metadata/...), as in a path watch.
    value = resolve_pointer(state.document(), path)
    too_large = bounded(value, path, manager.limits.max_read_bytes)
    if too_large is not None:
        hint = "read a smaller part (a longer path)"
        return dumps(
            {
                "name": name,
                "revision": revision,
                "path": path,
                "too_large": TooLargeOut.of(too_large, hint).model_dump(),
            }
        )
    return dumps({"name": name, "revision": revision, "path": path, "value": value})


@protocol_errors
async def history_resource(name: str, ctx: AppCtx) -> str:
    manager = _manager(ctx)
    context = await manager.get(name)
    entries = await manager.history(name, limit=_HISTORY_IN_RESOURCE)
    return dumps(
        {
            "name": name,
            "current_revision": context.revision,
            "revisions": [RevisionOut.of(e).model_dump(exclude_none=True) for e in entries],
        }
    )


@protocol_errors
async def revision_resource(name: str, revision: str, ctx: AppCtx) -> str:
    if not revision.isdigit() or int(revision) < 1 or len(revision) > 18:
        raise invalid_params(f"revision: must be a positive integer; got {revision[:40]!r}")
    manager = _manager(ctx)
    _, at, state = await manager.read(name, int(revision))
    return _state_document(name, at, state, manager.limits.max_read_bytes)


async def schema_resource(name: str) -> str:
    """The packaged JSON Schemas (ContextState, ContextConfig) the server validates with."""
    if name not in schemas.SCHEMA_NAMES:
        raise invalid_params(
            f"name: no schema {name[:60]!r}; known: {', '.join(schemas.SCHEMA_NAMES)}", code=NotFoundError.code
        )
    return dumps(schemas.load_schema(name))


async def _list_resources(
    ctx: ServerRequestContext[AppContext, Any], params: PaginatedRequestParams | None
) -> ListResourcesResult:
    """``groundhog://contexts`` plus one state resource per context, a page at a time."""
    cursor = params.cursor if params is not None else None
    try:
        manager = ctx.lifespan_context.request_manager(ctx.request)
        page = await manager.list(cursor=cursor, limit=manager.limits.max_page)
    except ContextError as exc:
        raise protocol_error(INVALID_PARAMS, exc) from None
    resources: list[Resource] = []
    if cursor is None:
        resources.append(
            Resource(
                uri="groundhog://contexts",
                name="contexts",
                title="All contexts",
                description="Your contexts: name, revision, size (first page)",
                mime_type=JSON,
            )
        )
    resources += [
        Resource(
            uri=state_uri(c.name),
            name=c.name,
            title=f"State of {c.name}",
            description=f"Current state of context {c.name} (revision {c.revision}, {c.state_size} bytes)",
            mime_type=JSON,
            size=c.state_size,
        )
        for c in page.contexts
    ]
    return ListResourcesResult(resources=resources, next_cursor=page.next_cursor)


def register_resources(server: MCPServer[AppContext]) -> None:
    # A template with an optional query variable, so plain groundhog://contexts reads the first page.
    server.resource(
        "groundhog://contexts{?cursor}",
        name="contexts",
        title="All contexts",
        description="Your contexts: name, revision, size; pages via ?cursor=",
        mime_type=JSON,
    )(contexts_resource)
    server.resource(
        "groundhog://contexts/{name}",
        name="context",
        title="Context",
        description="One context: id, versions, revision, metadata, settings, schema",
        mime_type=JSON,
    )(context_resource)
    server.resource(
        "groundhog://contexts/{name}/state{?path}",
        name="context-state",
        title="Context state",
        description="The current state of a context with its revision; ?path=/data/x: that part only "
        "(a subscription then fires only for changes touching it)",
        # A JSON Pointer starts with / and is no filesystem path: the SDK's path checks do not apply.
        security=ResourceSecurity(exempt_params={"path"}),
        mime_type=JSON,
    )(state_resource)
    server.resource(
        "groundhog://contexts/{name}/history",
        name="context-history",
        title="Context history",
        description=f"The last {_HISTORY_IN_RESOURCE} revisions of a context, newest first",
        mime_type=JSON,
    )(history_resource)
    server.resource(
        "groundhog://contexts/{name}/revisions/{revision}",
        name="context-revision",
        title="Context revision",
        description="The state of a context at a past revision",
        mime_type=JSON,
    )(revision_resource)
    server.resource(
        "groundhog://schemas/{name}",
        name="schema",
        title="Document schema",
        description=f"JSON Schema of a groundhog-mcp document: {', '.join(schemas.SCHEMA_NAMES)}",
        mime_type="application/schema+json",
    )(schema_resource)
    server._lowlevel_server.add_request_handler(  # pyright: ignore[reportPrivateUsage]
        "resources/list", PaginatedRequestParams, _list_resources
    )
