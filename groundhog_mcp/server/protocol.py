"""Protocol requests beyond tools and resources: subscribe/unsubscribe, completion, logging level."""

from __future__ import annotations

from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp_types import (
    INVALID_PARAMS,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    EmptyResult,
    SetLevelRequestParams,
    SubscribeRequestParams,
    UnsubscribeRequestParams,
)

from groundhog_mcp.errors import ContextError
from groundhog_mcp.server.app_context import AppContext
from groundhog_mcp.server.error_results import invalid_params, protocol_error
from groundhog_mcp.server.notify import is_subscribable

__all__ = ["register_protocol_handlers"]

_MAX_COMPLETIONS = 100
_NAME_ARGUMENTS = frozenset({"name"})

Ctx = ServerRequestContext[AppContext, Any]


def _connection(ctx: Ctx) -> Any:
    # The per-request ServerSession wraps the long-lived Connection, which outlives the request.
    return ctx.session._connection  # pyright: ignore[reportPrivateUsage]


async def _subscribe(ctx: Ctx, params: SubscribeRequestParams) -> EmptyResult:
    uri = str(params.uri)
    if not is_subscribable(uri):
        raise invalid_params(
            f"uri: {uri[:200]!r} cannot be subscribed to; use groundhog://contexts/{{name}}[/state|/history]"
        )
    try:
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
