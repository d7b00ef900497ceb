"""Assembles the MCPServer: tools, resources, notifications, session tracking."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import structlog
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp_types import CallToolResult, GetPromptResult, Icon, InputRequiredResult, ToolAnnotations
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from groundhog_mcp.errors import ContextError, NotFoundError
from groundhog_mcp.server.app_context import AppContext
from groundhog_mcp.server.arguments import (
    INVALID_ARGUMENT,
    describe_validation_error,
    first_invalid_field,
    make_arguments_strict,
)
from groundhog_mcp.server.audit_tool import register_audit_tool
from groundhog_mcp.server.branch_tools import register_branch_tools
from groundhog_mcp.server.deferred_builds import defer_resource_templates, published_prompt_arguments
from groundhog_mcp.server.definition_tool import register_definition_tool
from groundhog_mcp.server.error_results import admit_error_results, error_result, invalid_params, tool_error_result
from groundhog_mcp.server.lease_tool import register_lease_tool
from groundhog_mcp.server.merge_tool import register_merge_tool
from groundhog_mcp.server.notify import NamespacedSubscriptionBus
from groundhog_mcp.server.path_watch import capture_listen_uris
from groundhog_mcp.server.prompts import register_prompts
from groundhog_mcp.server.protocol import CACHE_HINTS, link_written_states, register_protocol_handlers
from groundhog_mcp.server.resources import register_resources
from groundhog_mcp.server.search_tool import register_search_tool
from groundhog_mcp.server.surface import select_tools
from groundhog_mcp.server.timeline_app import timeline_app
from groundhog_mcp.server.tool_schemas import deferred_tool, published_schemas
from groundhog_mcp.server.tools import register_tools

__all__ = ["INSTRUCTIONS", "build_server"]

log = structlog.get_logger("groundhog_mcp.tools")

INSTRUCTIONS = """\
groundhog-mcp keeps durable, versioned JSON state in named contexts that survive restarts and are
shared with other agents. Typical use: register_context once (if_exists='return' makes it
get-or-create), get_state to read (note the revision), update_state with expected_revision set to
that revision. If the write conflicts, someone else changed the context: the error tells you the
current revision and what changed; re-read and retry. get_history, diff_states and rollback_state
show and undo past changes. find_contexts finds contexts by conditions on their state or by text.
Resources groundhog://contexts/{name}/state mirror the state."""


async def _track_sessions(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Remember handshake-era sessions so register/unregister can reach them with list_changed."""
    app = ctx.lifespan_context
    if isinstance(app, AppContext) and ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        # The per-request ServerSession wraps the long-lived Connection; only the latter can
        # carry notifications after this request has been answered. It hears about what the
        # principal it authenticated as may read; without a principal, nothing.
        try:
            principal = app.request_manager(ctx.request).principal
        except ContextError:
            return await call_next(ctx)
        app.notifier.track(ctx.session._connection, principal)  # pyright: ignore[reportPrivateUsage]
    return await call_next(ctx)


class GroundhogServer(MCPServer[AppContext]):
    """MCPServer with argument errors phrased as ``field: rule (got …)`` and every tool error
    answered with its code in the result's structured part (see ``server/error_results.py``).

    Only the tools of the profile are built (:attr:`served_tools`; None: all), and those from
    their published schemas (:attr:`published`, ``server/tool_schemas.py``) when given: building
    a tool the SDK's way makes its pydantic models and JSON Schemas, the largest part of start-up."""

    served_tools: frozenset[str] | None = None
    published: dict[str, dict[str, Any]] | None = None

    def add_tool(
        self,
        fn: Callable[..., Any],
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
        annotations: ToolAnnotations | None = None,
        icons: list[Icon] | None = None,
        meta: dict[str, Any] | None = None,
        structured_output: bool | None = None,
    ) -> None:
        tool_name = name or fn.__name__
        if self.served_tools is not None and tool_name not in self.served_tools:
            return
        schemas = None if self.published is None or not structured_output else self.published.get(tool_name)
        if schemas is None:
            super().add_tool(fn, name, title, description, annotations, icons, meta, structured_output)
            return
        tool = deferred_tool(
            fn,
            schemas,
            name=tool_name,
            title=title,
            description=description,
            annotations=annotations,
            icons=icons,
            meta=meta,
        )
        self._tool_manager._tools[tool_name] = tool  # pyright: ignore[reportPrivateUsage]

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[AppContext, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        tool = self._tool_manager.get_tool(name)  # pyright: ignore[reportPrivateUsage]
        if tool is not None:
            accepted = tool.parameters.get("properties", {})
            unknown = sorted(key for key in arguments if key not in accepted)
            if unknown:
                return error_result(
                    f"Error executing tool {name}: {INVALID_ARGUMENT}: {', '.join(unknown)[:200]}: not accepted by "
                    f"{name} (accepted: {', '.join(accepted)})",
                    code=INVALID_ARGUMENT,
                    details={"field": unknown[0][:200]},
                )
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            # Answered here, not raised: the error result carries its code in structuredContent.
            cause = exc.__cause__
            if isinstance(cause, ValidationError) and not isinstance(exc, UnexpectedToolError):
                # Which field only: the rejected values are the caller's data.
                log.info("tool arguments rejected", tool=name, field=first_invalid_field(cause))
                return error_result(
                    f"Error executing tool {name}: {describe_validation_error(cause)}",
                    code=INVALID_ARGUMENT,
                    details={"field": first_invalid_field(cause)},
                )
            return tool_error_result(name, exc, field="name" if tool is None else None)

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Context[AppContext, Any] | None = None
    ) -> GetPromptResult | InputRequiredResult:
        """Unknown prompts and missing arguments are invalid params (-32602) naming what is wrong;
        the SDK would answer them with a bare error code 0."""
        prompts = {prompt.name: prompt for prompt in await self.list_prompts()}
        prompt = prompts.get(name)
        if prompt is None:
            raise invalid_params(
                f"name: no prompt {name[:80]!r}; the prompts are {', '.join(sorted(prompts))}", code=NotFoundError.code
            )
        given = arguments or {}
        missing = [a.name for a in prompt.arguments or [] if a.required and a.name not in given]
        if missing:
            raise invalid_params(
                f"arguments.{missing[0]}: is required by prompt {name!r} (required: {', '.join(missing)})"
            )
        return await super().get_prompt(name, arguments, context)


def build_server(
    lifespan: Callable[[MCPServer[AppContext], NamespacedSubscriptionBus], AbstractAsyncContextManager[AppContext]],
    *,
    version: str,
    token_verifier: TokenVerifier | None = None,
    auth: AuthSettings | None = None,
    tools: Sequence[str] | None = None,
    published: bool = True,
) -> MCPServer[AppContext]:
    """An MCPServer whose lifespan yields the AppContext (given the subscription bus it should use).

    ``tools``: the tools to list and serve (None: all); the others answer "unknown tool".
    ``published``: register them from ``server/tool_schemas.json``, and the resource templates and
    prompts deferred (``server/deferred_builds.py``); False: build all of them the SDK's way.

    ``token_verifier`` with ``auth``: the HTTP transports require a bearer token on every request.
    """
    subscriptions = NamespacedSubscriptionBus()

    def bound_lifespan(server: MCPServer[AppContext]) -> AbstractAsyncContextManager[AppContext]:
        return lifespan(server, subscriptions)

    server = GroundhogServer(
        "groundhog-mcp",
        title="groundhog-mcp",
        description="Durable, shared, versioned context state for LLM agents",
        instructions=INSTRUCTIONS,
        version=version,
        lifespan=bound_lifespan,
        subscriptions=subscriptions,
        middleware=[_track_sessions, link_written_states, capture_listen_uris],
        cache_hints=CACHE_HINTS,
        token_verifier=token_verifier,
        auth=auth,
        extensions=[timeline_app()],  # get_history's MCP App (server/timeline_app.py)
    )
    server.served_tools = None if tools is None else frozenset(tools)
    server.published = published_schemas() if published else None
    register_tools(server)
    register_merge_tool(server)
    register_audit_tool(server)
    register_branch_tools(server)
    register_lease_tool(server)
    register_definition_tool(server)
    register_search_tool(server)
    server.published = None  # the other tools' schemas need not stay in memory
    select_tools(server, tools)
    make_arguments_strict(server)  # after every tool is added
    admit_error_results(server)  # likewise
    if published:
        defer_resource_templates(server)  # the SDK's templates built at their first read
    register_resources(server)
    register_prompts(server, published_prompt_arguments() if published else None)
    register_protocol_handlers(server)
    _advertise_list_changed(server)
    return server


def _advertise_list_changed(server: MCPServer[AppContext]) -> None:
    """Handshake-era clients learn of ``resources.listChanged`` only from the init options,
    which every transport builds with ``create_initialization_options()``: default ours."""
    lowlevel = server._lowlevel_server  # pyright: ignore[reportPrivateUsage]
    original = lowlevel.create_initialization_options

    def create_initialization_options(
        notification_options: NotificationOptions | None = None, *args: Any, **kwargs: Any
    ) -> Any:
        return original(notification_options or NotificationOptions(resources_changed=True), *args, **kwargs)

    lowlevel.create_initialization_options = create_initialization_options  # type: ignore[method-assign]
