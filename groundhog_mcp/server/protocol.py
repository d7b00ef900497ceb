"""Protocol details beyond tools and resources: subscribe/unsubscribe, completion, logging level,
cache hints on list and read results, and resource links in write results."""

from __future__ import annotations

from typing import Any

from mcp.server.caching import CacheableMethod, CacheHint
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp_types import (
    INVALID_PARAMS,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    EmptyResult,
    ResourceLink,
    SetLevelRequestParams,
    SubscribeRequestParams,
    UnsubscribeRequestParams,
)

from groundhog_mcp.errors import ContextError, LimitExceededError
from groundhog_mcp.server.app_context import AppContext
from groundhog_mcp.server.error_results import protocol_error
from groundhog_mcp.server.notify import MAX_PATH_SUBSCRIPTIONS, is_subscribable, state_uri
from groundhog_mcp.server.path_watch import parse_path_uri

__all__ = ["CACHE_HINTS", "link_written_states", "register_protocol_handlers"]

# SEP-2549 (2026-07-28 clients). What the tools, prompts and templates are is the same for every
# principal and fixed while the server runs: shareable for a minute. Which contexts exist and what
# they hold depends on who asks (namespace, grants) and changes with every write: private, and
# stale at once (clients hear of changes through notifications).
CACHE_HINTS: dict[CacheableMethod, CacheHint] = {
    "tools/list": CacheHint(ttl_ms=60_000, scope="public"),
    "prompts/list": CacheHint(ttl_ms=60_000, scope="public"),
    "resources/templates/list": CacheHint(ttl_ms=60_000, scope="public"),
    "resources/list": CacheHint(ttl_ms=0, scope="private"),
    "resources/read": CacheHint(ttl_ms=0, scope="private"),
}

# resource_link content arrived with protocol 2025-06-18.
_BEFORE_RESOURCE_LINKS = frozenset({"2024-11-05", "2025-03-26"})

# Tools whose success writes a context's state, and the result field naming that context.
_WRITTEN_CONTEXT = {
    "register_context": "name",
    "update_state": "name",
    "rollback_state": "name",
    "emit_event": "name",
    "replay_dead_letter": "name",
    "merge_states": "target",
}

_MAX_COMPLETIONS = 100
_NAME_ARGUMENTS = frozenset({"name"})

Ctx = ServerRequestContext[AppContext, Any]


def _connection(ctx: Ctx) -> Any:
    # The per-request ServerSession wraps the long-lived Connection, which outlives the request.
    return ctx.session._connection  # pyright: ignore[reportPrivateUsage]


async def link_written_states(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Middleware: a successful write's result also carries a ``resource_link`` to the state
    resource of the context it wrote, so a client can read or subscribe to it. (Middleware sees
    results in wire form, after the SDK serialised them.)"""
    result = await call_next(ctx)
    if ctx.method != "tools/call" or ctx.protocol_version in _BEFORE_RESOURCE_LINKS or not isinstance(result, dict):
        return result
    field = _WRITTEN_CONTEXT.get(str((ctx.params or {}).get("name")))
    structured = result.get("structuredContent")
    name = structured.get(field) if field and isinstance(structured, dict) and not result.get("isError") else None
    content = result.get("content")
    if isinstance(name, str) and isinstance(content, list):
        link = ResourceLink(uri=state_uri(name), name=name, title=f"{name} state", mime_type="application/json")
        result = {**result, "content": [*content, link.model_dump(by_alias=True, exclude_none=True)]}
    return result


async def _subscribe(ctx: Ctx, params: SubscribeRequestParams) -> EmptyResult:
    uri = str(params.uri)
    if not is_subscribable(uri):
        # Any URI may be subscribed to (the protocol lets a client try): acknowledged, and never
        # fires, since only groundhog:// resources change here.
        return EmptyResult()
    try:
        # A path subscription names a valid JSON Pointer, and a connection has a bounded number.
        if parse_path_uri(uri) is not None and (
            ctx.lifespan_context.notifier.path_subscriptions(_connection(ctx)) >= MAX_PATH_SUBSCRIPTIONS
        ):
            raise LimitExceededError(
                f"uri: a connection may subscribe to at most {MAX_PATH_SUBSCRIPTIONS} path resources "
                "(…/state?path=…); unsubscribe from one first"
            )
        principal = ctx.lifespan_context.request_manager(ctx.request).principal
    except ContextError as exc:
        raise protocol_error(INVALID_PARAMS, exc) from None
    ctx.lifespan_context.notifier.subscribe(_connection(ctx), uri, principal)
    return EmptyResult()


async def _unsubscribe(ctx: Ctx, params: UnsubscribeRequestParams) -> EmptyResult:
    ctx.lifespan_context.notifier.unsubscribe(_connection(ctx), str(params.uri))
    return EmptyResult()


async def _complete(ctx: Ctx, params: CompleteRequestParams) -> CompleteResult:
    """Context names for any ``name`` argument of a resource template or prompt."""
    if params.argument.name not in _NAME_ARGUMENTS:
        return CompleteResult(completion=Completion(values=[]))
    prefix = params.argument.value
    try:
        manager = ctx.lifespan_context.request_manager(ctx.request)
        page = await manager.list(prefix=prefix, limit=_MAX_COMPLETIONS)
    except ContextError:
        return CompleteResult(completion=Completion(values=[]))
    return CompleteResult(
        completion=Completion(values=[c.name for c in page.contexts], total=None, has_more=page.next_cursor is not None)
    )


async def _set_level(ctx: Ctx, params: SetLevelRequestParams) -> EmptyResult:
    # groundhog-mcp sends no log notifications to clients (its logs go to stderr); the level is
    # recorded for the connection so the request is honoured, not refused.
    _connection(ctx).state["log_level"] = params.level
    return EmptyResult()


def register_protocol_handlers(server: MCPServer[AppContext]) -> None:
    lowlevel = server._lowlevel_server  # pyright: ignore[reportPrivateUsage]
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, _subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, _unsubscribe)
    lowlevel.add_request_handler("completion/complete", CompleteRequestParams, _complete)
    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, _set_level)
